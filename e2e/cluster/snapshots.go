package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
)

// VolumeSnapshots work in the cluster as in one set up by the
// external-snapshotter's instructions: its CRDs, and its snapshot-controller
// (a host process beside kube-controller-manager) turning each
// VolumeSnapshot into a VolumeSnapshotContent. The CSI side, the
// csi-snapshotter sidecar's controller, is the driver's business: stickyvol's
// agents run it for their own node.

// snapshotControllerUser is the identity of the snapshot-controller's client
// certificate. kube-controller-manager's own identity,
// system:kube-controller-manager, has no rights on the snapshot APIs, and
// the admin's would hide a right the controller lacks; so it gets its own
// user, bound to snapshotControllerRole.
const snapshotControllerUser = "snapshot-controller"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// startSnapshotController installs the snapshot CRDs and the controller's
// RBAC, then starts the snapshot-controller. It needs both first: it lists
// the snapshot APIs at start and exits when it cannot within 30 s.
func (c *Cluster) startSnapshotController(ctx context.Context) error {
	if err := c.installSnapshotCRDs(ctx); err != nil {
		return err
	}
	if err := c.grantSnapshotController(ctx); err != nil {
		return err
	}
	_, err := c.start(ctx, procSpec{name: "snapshot-controller", argv: snapshotControllerArgs(
		c.st.Binaries.SnapshotController, c.kubeconfigPath(snapshotControllerUser), c.st.Ports.SnapshotCtrl)})
	return err
}

// snapshotControllerArgs is the snapshot-controller's command line.
//
// --enable-distributed-snapshotting makes it label each
// VolumeSnapshotContent it creates with
// snapshot.storage.kubernetes.io/managed-by=<node>, the node that the source
// PV's node affinity selects. A stickyvol volume lives on one node, and only
// that node's agent can snapshot it: each agent handles only the contents
// labelled with its node, and the admission policy holds it to them.
//
// The metrics endpoint is its only HTTP server, and it starts serving once
// the controller has found the CRDs: waitReady takes it as the readiness
// check.
func snapshotControllerArgs(bin, kubeconfig string, metricsPort int) []string {
	return []string{
		bin,
		"--kubeconfig=" + kubeconfig,
		"--leader-election=false",
		"--enable-distributed-snapshotting",
		"--http-endpoint=" + hostPort("127.0.0.1", metricsPort),
		"--v=2",
	}
}

// installSnapshotCRDs creates the snapshot CRDs from Binaries.SnapshotCRDDir
// and waits until the API server serves them (Established).
func (c *Cluster) installSnapshotCRDs(ctx context.Context) error {
	paths, err := filepath.Glob(filepath.Join(c.st.Binaries.SnapshotCRDDir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		return fmt.Errorf("no snapshot CRDs in %q", c.st.Binaries.SnapshotCRDDir)
	}
	var crds []*unstructured.Unstructured
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		objs, err := decodeManifests(data)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		crds = append(crds, objs...)
	}
	cfg, err := c.RESTConfig()
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	client := dyn.Resource(crdResource)
	for _, crd := range crds {
		if crd.GetKind() != "CustomResourceDefinition" {
			return fmt.Errorf("%s %s is not a CustomResourceDefinition", crd.GetKind(), crd.GetName())
		}
		if _, err := client.Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating CRD %s: %w", crd.GetName(), err)
		}
	}
	for _, crd := range crds {
		err := c.poll(ctx, "kube-apiserver", readyTimeout, func(ctx context.Context) (bool, error) {
			got, err := client.Get(ctx, crd.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return established(got), nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s: %w", crd.GetName(), err)
		}
	}
	klog.FromContext(ctx).V(2).Info("Snapshot CRDs established", "count", len(crds))
	c.step("%d snapshot CRDs established", len(crds))
	return nil
}

// decodeManifests decodes every object of a multi-document YAML file.
func decodeManifests(data []byte) ([]*unstructured.Unstructured, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, err
		}
		if string(bytes.TrimSpace(js)) == "null" { // only comments
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(js); err != nil {
			return nil, err
		}
		objs = append(objs, obj)
	}
}

// established tells whether a CRD's Established condition is True: its
// resources are served.
func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	return slices.ContainsFunc(conds, func(c any) bool {
		m, ok := c.(map[string]any)
		return ok && m["type"] == "Established" && m["status"] == "True"
	})
}

// snapshotControllerRole is what the snapshot-controller does with the API,
// with --enable-distributed-snapshotting and group snapshots on.
func snapshotControllerRole() *rbacv1.ClusterRole {
	read := []string{"get", "list", "watch"}
	write := []string{"create", "get", "list", "watch", "update", "patch", "delete"}
	status := []string{"update", "patch"}
	rule := func(group, resource string, verbs []string) rbacv1.PolicyRule {
		return rbacv1.PolicyRule{APIGroups: []string{group}, Resources: []string{resource}, Verbs: verbs}
	}
	return &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: snapshotControllerUser},
		Rules: []rbacv1.PolicyRule{
			// The source and restored claims and their PVs; it adds
			// and removes a finalizer on a claim being snapshotted.
			rule("", "persistentvolumes", read),
			rule("", "persistentvolumeclaims", []string{"get", "list", "watch", "update"}),
			// Distributed snapshotting: the node a PV's affinity selects.
			rule("", "nodes", read),
			rule("", "events", []string{"create", "update", "patch"}),
			rule("snapshot.storage.k8s.io", "volumesnapshotclasses", read),
			rule("snapshot.storage.k8s.io", "volumesnapshotcontents", write),
			rule("snapshot.storage.k8s.io", "volumesnapshotcontents/status", status),
			// The members of a group snapshot are VolumeSnapshots it
			// creates and deletes.
			rule("snapshot.storage.k8s.io", "volumesnapshots", write),
			rule("snapshot.storage.k8s.io", "volumesnapshots/status", status),
			rule("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", read),
			rule("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", write),
			rule("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", status),
			rule("groupsnapshot.storage.k8s.io", "volumegroupsnapshots", []string{"get", "list", "watch", "update", "patch"}),
			rule("groupsnapshot.storage.k8s.io", "volumegroupsnapshots/status", status),
		},
	}
}

// grantSnapshotController binds snapshotControllerRole to the
// snapshot-controller's user.
func (c *Cluster) grantSnapshotController(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	role := snapshotControllerRole()
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ClusterRole %s: %w", role.Name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: snapshotControllerUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: snapshotControllerUser}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ClusterRoleBinding %s: %w", binding.Name, err)
	}
	return nil
}

// snapshotControllerMetrics is the URL the snapshot-controller serves its
// metrics at.
func (c *Cluster) snapshotControllerMetrics() string {
	return "http://" + hostPort("127.0.0.1", c.st.Ports.SnapshotCtrl) + "/metrics"
}
