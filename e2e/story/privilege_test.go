//go:build e2e

package story

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestLeastPrivilege writes, with the identity of one node's agent (a token
// bound to its pod, as kubelet mounts it), to the PVs and claims of both
// nodes: the API server refuses every write to the other node's, while the
// same writes to its own node's go through; and what only the cluster
// duties do (deleting claims and pods, the Lease) is refused outright.
func TestLeastPrivilege(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	pods := e.createStatefulSet(ctx, statefulSet("guarded", 2, spread))
	own, other := e.bindingOf(ctx, pods[0]), e.bindingOf(ctx, pods[1])
	if own.node == other.node {
		t.Fatalf("both pods on %s; the scenario needs one on each node", own.node)
	}
	e.step("a token for the agent on %s, bound to its pod", own.node)
	agent := e.agentClient(ctx, own.node, true)
	label := []byte(`{"metadata":{"labels":{"stickyvol.dev/e2e-touched":"yes"}}}`)
	pvs, claims := agent.CoreV1().PersistentVolumes(), agent.CoreV1().PersistentVolumeClaims(e.ns)

	e.step("writes to %s's PV and claim: refused", other.node)
	_, err := pvs.Patch(ctx, other.pv, types.MergePatchType, label, metav1.PatchOptions{})
	e.refused("label another node's PV", err, "may only write stickyvol PVs of its own node")
	err = pvs.Delete(ctx, other.pv, metav1.DeleteOptions{})
	e.refused("delete another node's PV", err, "may only write stickyvol PVs of its own node")
	_, err = pvs.Create(ctx, e.pvOn(other.node), metav1.CreateOptions{})
	e.refused("create a PV on another node", err, "may only write stickyvol PVs of its own node")
	// Claims are updated, not patched: the provisioning library removes
	// the selected node with an update, and that is all the agents may do.
	err = e.updateClaim(ctx, claims, other.claim, unselect)
	e.refused("send a claim selected to another node back to the scheduler", err, "may only update claims selected to its own node")
	err = e.updateClaim(ctx, claims, own.claim, selectTo(other.node))
	e.refused("select its own claim to another node", err, "may only update claims selected to its own node")
	_, err = claims.Patch(ctx, own.claim, types.MergePatchType, label, metav1.PatchOptions{})
	e.refused("patch a claim", err, "cannot patch resource")
	// The resizer writes a claim's status: the same rule holds there.
	err = e.updateClaimStatus(ctx, claims, other.claim)
	e.refused("update the status of a claim selected to another node", err, "may only update claims selected to its own node")

	capacities := agent.StorageV1().CSIStorageCapacities(framework.Namespace)
	_, err = capacities.Create(ctx, capacityOn(other.node), metav1.CreateOptions{})
	e.refused("publish room for another node", err, "may only write CSIStorageCapacity objects of its own node")

	e.step("what only the controller does: refused by RBAC")
	err = claims.Delete(ctx, own.claim, metav1.DeleteOptions{})
	e.refused("delete a claim", err, "cannot delete resource")
	err = agent.CoreV1().Pods(e.ns).Delete(ctx, pods[0].Name, metav1.DeleteOptions{})
	e.refused("delete a pod", err, "cannot delete resource")
	_, err = agent.CoordinationV1().Leases(framework.Namespace).Create(ctx,
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "e2e-not-the-agents"}}, metav1.CreateOptions{})
	e.refused("create a Lease", err, "cannot create resource")

	e.step("the same writes to %s's own PV and claim: allowed", own.node)
	if _, err := pvs.Patch(ctx, own.pv, types.MergePatchType, label, metav1.PatchOptions{}); err != nil {
		t.Errorf("label its own PV: %v", err)
	}
	if err := e.updateClaim(ctx, claims, own.claim, touch); err != nil {
		t.Errorf("update a claim selected to its own node: %v", err)
	}
	if err := e.updateClaimStatus(ctx, claims, own.claim); err != nil {
		t.Errorf("update the status of a claim selected to its own node: %v", err)
	}
	if c, err := capacities.Create(ctx, capacityOn(own.node), metav1.CreateOptions{}); err != nil {
		t.Errorf("publish room for its own node: %v", err)
	} else if err := capacities.Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete what it published for its own node: %v", err)
	}
	created, err := pvs.Create(ctx, e.pvOn(own.node), metav1.CreateOptions{})
	if err != nil {
		t.Errorf("create a PV on its own node: %v", err)
	} else if err := pvs.Delete(ctx, created.Name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete a PV of its own node: %v", err)
	}

	e.step("a token of the agents' service account not bound to a pod names no node: refused")
	unbound := e.agentClient(ctx, own.node, false)
	_, err = unbound.CoreV1().PersistentVolumes().Patch(ctx, own.pv, types.MergePatchType, label, metav1.PatchOptions{})
	e.refused("label its own PV without a node in the token", err, "must use the service account token bound to its pod")

	e.step("%s's volume is untouched", other.node)
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, other.pv, metav1.GetOptions{})
	if err != nil || pv.DeletionTimestamp != nil || pv.Status.Phase != v1.VolumeBound || pv.Labels["stickyvol.dev/e2e-touched"] != "" {
		t.Errorf("PV %s after the refused writes: %v, %+v", other.pv, err, pv)
	}
}

// agentClient is an API client with the identity of the agent on node: a
// token of its service account, bound to its pod (which puts the node's name
// in the token, as kubelet's projected token has it) or, with bound false,
// to nothing.
func (e *env) agentClient(ctx context.Context, node string, bound bool) kubernetes.Interface {
	e.t.Helper()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}
	if bound {
		pods, err := e.Client.CoreV1().Pods(framework.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: framework.AgentPodLabel, FieldSelector: "spec.nodeName=" + node})
		if err != nil || len(pods.Items) != 1 {
			e.t.Fatalf("the agent pod on %s: %v, %d found", node, err, len(pods.Items))
		}
		pod := pods.Items[0]
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	token, err := e.Client.CoreV1().ServiceAccounts(framework.Namespace).CreateToken(ctx, framework.DaemonSetName, req, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("a token for %s: %v", framework.DaemonSetName, err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = token.Status.Token
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return client
}

// refused fails the test unless err is the API server's Forbidden with a
// message that contains why.
func (e *env) refused(what string, err error, why string) {
	e.t.Helper()
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), why) {
		e.t.Errorf("%s: got %v, want Forbidden: ...%s...", what, err, why)
		return
	}
	e.t.Logf("%s: refused: %v", what, err)
}

// pvOn is a stickyvol PV pinned to node, with a class no claim uses, as the
// provisioner would create one.
func (e *env) pvOn(node string) *v1.PersistentVolume {
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-privilege-"},
		Spec: v1.PersistentVolumeSpec{
			Capacity:         v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Mi")},
			AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			StorageClassName: "e2e-no-claim-" + e.ns,
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: framework.DriverName, VolumeHandle: "e2e-privilege-" + node}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: framework.TopologyKey, Operator: v1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
		},
	}
}

// capacityOn is a CSIStorageCapacity object for node and a class no claim
// uses, as an agent publishes them.
func capacityOn(node string) *storagev1.CSIStorageCapacity {
	room := resource.MustParse("1Gi")
	return &storagev1.CSIStorageCapacity{
		ObjectMeta:       metav1.ObjectMeta{GenerateName: "e2e-privilege-"},
		NodeTopology:     &metav1.LabelSelector{MatchLabels: map[string]string{framework.TopologyKey: node}},
		StorageClassName: "e2e-no-claim",
		Capacity:         &room,
	}
}

// updateClaim gets the claim with the agent's client, changes it and
// updates it.
func (e *env) updateClaim(ctx context.Context, claims typedcorev1.PersistentVolumeClaimInterface, name string, change func(*v1.PersistentVolumeClaim)) error {
	e.t.Helper()
	claim, err := claims.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("the agent reads claim %s: %v", name, err)
	}
	change(claim)
	_, err = claims.Update(ctx, claim, metav1.UpdateOptions{})
	return err
}

// updateClaimStatus writes the claim's status back as the agent read it.
func (e *env) updateClaimStatus(ctx context.Context, claims typedcorev1.PersistentVolumeClaimInterface, name string) error {
	e.t.Helper()
	claim, err := claims.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("the agent reads claim %s: %v", name, err)
	}
	_, err = claims.UpdateStatus(ctx, claim, metav1.UpdateOptions{})
	return err
}

func unselect(claim *v1.PersistentVolumeClaim) {
	delete(claim.Annotations, "volume.kubernetes.io/selected-node")
}

func selectTo(node string) func(*v1.PersistentVolumeClaim) {
	return func(claim *v1.PersistentVolumeClaim) { claim.Annotations["volume.kubernetes.io/selected-node"] = node }
}

func touch(claim *v1.PersistentVolumeClaim) {
	metav1.SetMetaDataLabel(&claim.ObjectMeta, "stickyvol.dev/e2e-touched", "yes")
}
