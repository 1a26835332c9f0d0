package duties_test

import (
	"context"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/duties"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// copyClaim is a claim selected to node with the data source kind/name.
func copyClaim(name, node, group, kind, source string) *v1.PersistentVolumeClaim {
	c := fixtures.Claim(name, node, "1Gi", v1.ReadWriteOnce)
	ref := &v1.TypedObjectReference{Kind: kind, Name: source}
	if group != "" {
		ref.APIGroup = &group
	}
	c.Spec.DataSourceRef = ref
	return c
}

// podOf is a pending pod using claim, with edits.
func podOf(claim string, edits ...func(*v1.Pod)) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-" + claim, Namespace: "default"},
		Spec: v1.PodSpec{Volumes: []v1.Volume{{Name: "data", VolumeSource: v1.VolumeSource{
			PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}},
	}
	for _, e := range edits {
		e(p)
	}
	return p
}

// TestCopiesMoveToSource: clones and restores the scheduler put on node-b,
// whose sources lie on node-a, move to node-a, with an event, when their
// pods may run there; one whose pod is held to node-b (node selector), or
// does not tolerate node-a's taint, stays; one already on node-a is not
// touched. A restore of a snapshot whose node was deleted stays, with a
// Warning that says why no copy can be made.
func TestCopiesMoveToSource(t *testing.T) {
	nodeA, nodeB := fixtures.ReadyNode("node-a"), fixtures.ReadyNode("node-b")
	nodeA.Labels = map[string]string{v1.LabelHostname: "node-a"}
	nodeB.Labels = map[string]string{v1.LabelHostname: "node-b"}
	nodeA.Spec.Taints = []v1.Taint{{Key: "dedicated", Value: "db", Effect: v1.TaintEffectNoSchedule}}
	tolerant := func(p *v1.Pod) {
		p.Spec.Tolerations = []v1.Toleration{{Key: "dedicated", Operator: v1.TolerationOpExists}}
	}
	source := fixtures.Claim("src", "node-a", "1Gi", v1.ReadWriteOnce)
	source.Spec.VolumeName, source.Status.Phase = "pv-src", v1.ClaimBound
	const group = "snapshot.storage.k8s.io"
	claims := map[string]*v1.PersistentVolumeClaim{
		"clone":      copyClaim("clone", "node-b", "", "PersistentVolumeClaim", "src"),
		"restore":    copyClaim("restore", "node-b", group, "VolumeSnapshot", "nightly"),
		"pinned":     copyClaim("pinned", "node-b", "", "PersistentVolumeClaim", "src"),
		"intolerant": copyClaim("intolerant", "node-b", "", "PersistentVolumeClaim", "src"),
		"home":       copyClaim("home", "node-a", "", "PersistentVolumeClaim", "src"),
		"orphaned":   copyClaim("orphaned", "node-b", group, "VolumeSnapshot", "lost"),
	}
	objs := []runtime.Object{nodeA, nodeB, fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), source,
		fixtures.PVOn("pv-src", "node-a"),
		podOf("clone", tolerant), podOf("restore", tolerant), podOf("home", tolerant), podOf("intolerant"), podOf("orphaned", tolerant),
		podOf("pinned", tolerant, func(p *v1.Pod) { p.Spec.NodeSelector = map[string]string{v1.LabelHostname: "node-b"} }),
	}
	for _, c := range claims {
		objs = append(objs, c)
	}
	client := fake.NewClientset(objs...)
	snaps := fixtures.SnapshotClientset(
		&snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: "default"},
			Status: &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To("content-1"), ReadyToUse: ptr.To(true)}},
		&snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "content-1", Labels: map[string]string{provisioner.ManagedByLabel: "node-a"}},
			Spec:   snapv1.VolumeSnapshotContentSpec{Driver: driver.Name},
			Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To("snapshot-1"), ReadyToUse: ptr.To(true)}},
		&snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "lost", Namespace: "default"},
			Status: &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To("content-2"), ReadyToUse: ptr.To(true)}},
		&snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "content-2", Labels: map[string]string{provisioner.ManagedByLabel: "node-gone"}},
			Spec:   snapv1.VolumeSnapshotContentSpec{Driver: driver.Name},
			Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To("snapshot-2"), ReadyToUse: ptr.To(true)}},
	)
	cluster := informers.NewSharedInformerFactory(client, 0)
	c, err := duties.NewCopies(duties.CopiesConfig{DriverName: driver.Name, TopologyKey: driver.TopologyKey,
		Client: client, Informers: cluster, Snapshots: provisioner.ClientSnapshots(snaps)})
	if err != nil {
		t.Fatal(err)
	}
	runDuty(t, c.Run, cluster)

	selected := func(ctx context.Context, name string) string {
		claim, err := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return provisioner.SelectedNode(claim)
	}
	for _, name := range []string{"clone", "restore"} {
		fixtures.Eventually(t, name+" moved to node-a", func(ctx context.Context) (bool, error) {
			return selected(ctx, name) == "node-a", nil
		})
		fixtures.WaitForEvent(t, client, claims[name], v1.EventTypeNormal, "moved this claim from node node-b to node node-a")
	}
	fixtures.WaitForEvent(t, client, claims["orphaned"], v1.EventTypeWarning, "lies on node node-gone, which was deleted")
	time.Sleep(200 * time.Millisecond) // the one worker has had its turn at the others
	for name, want := range map[string]string{"pinned": "node-b", "intolerant": "node-b", "home": "node-a", "orphaned": "node-b"} {
		if got := selected(t.Context(), name); got != want {
			t.Errorf("%s selected to %s, want %s", name, got, want)
		}
	}
}
