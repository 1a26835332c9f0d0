package duties_test

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/duties"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

const stickyvolNamespace = "stickyvol"

// usableNode is a Ready node whose kubelet registered the driver: the node
// object labelled with the driver's topology, and its CSINode.
func usableNode(name string) []any {
	n := fixtures.ReadyNode(name)
	n.Labels = map[string]string{driver.TopologyKey: name}
	return []any{n, &storagev1.CSINode{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: driver.Name, NodeID: name}}},
	}}
}

func immediateClaim(name, size string) *v1.PersistentVolumeClaim {
	return fixtures.Claim(name, "", size, v1.ReadWriteOnce)
}

// startPlacement runs the placement duty against client until the test ends,
// with the factories started for the life of the test as `stickyvol node`
// does.
func startPlacement(t *testing.T, client *fake.Clientset) {
	t.Helper()
	cluster := informers.NewSharedInformerFactory(client, 0)
	capacities := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(stickyvolNamespace))
	p, err := duties.NewPlacement(duties.PlacementConfig{DriverName: driver.Name,
		TopologyKey: driver.TopologyKey, Client: client, Informers: cluster, CapacityInformers: capacities})
	if err != nil {
		t.Fatal(err)
	}
	runDuty(t, p.Run, cluster, capacities)
}

// runDuty starts the factories and runs a duty until the test ends, and
// fails the test if the duty returns an error.
func runDuty(t *testing.T, run func(context.Context) error, factories ...informers.SharedInformerFactory) {
	t.Helper()
	ctx, cancel := context.WithCancel(fixtures.Context(t, 2))
	for _, f := range factories {
		f.StartWithContext(ctx)
	}
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("duty Run: %v", err)
		}
		for _, f := range factories {
			f.Shutdown()
		}
	})
}

func newClient(objects ...any) *fake.Clientset {
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingImmediate))
	for _, o := range objects {
		var err error
		switch o := o.(type) {
		case *v1.Node:
			_, err = client.CoreV1().Nodes().Create(context.Background(), o, metav1.CreateOptions{})
		case *storagev1.CSINode:
			_, err = client.StorageV1().CSINodes().Create(context.Background(), o, metav1.CreateOptions{})
		case *v1.PersistentVolume:
			_, err = client.CoreV1().PersistentVolumes().Create(context.Background(), o, metav1.CreateOptions{})
		case *storagev1.CSIStorageCapacity:
			_, err = client.StorageV1().CSIStorageCapacities(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			panic(err)
		}
	}
	return client
}

// placedOn waits until the claim has a selected node and returns it.
func placedOn(t *testing.T, client *fake.Clientset, name string) string {
	t.Helper()
	var node string
	fixtures.Eventually(t, "a node for "+name, func(ctx context.Context) (bool, error) {
		c, err := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		node = c.Annotations[provisioner.AnnSelectedNode]
		return node != "", nil
	})
	return node
}

func TestPlacementSpreadsOverUsableNodes(t *testing.T) {
	notReady := fixtures.ReadyNode("c")
	notReady.Status.Conditions[0].Status = v1.ConditionFalse
	cordoned := usableNode("e")
	cordoned[0].(*v1.Node).Spec.Unschedulable = true
	var objects []any
	objects = append(objects, usableNode("a")...)
	objects = append(objects, usableNode("b")...)
	objects = append(objects, notReady, usableNode("c")[1]) // registered but not Ready
	objects = append(objects, fixtures.ReadyNode("d"))      // Ready, driver not registered
	objects = append(objects, cordoned...)
	objects = append(objects, fixtures.PVOn("pvc-existing", "b"))
	client := newClient(objects...)
	startPlacement(t, client)

	// Not placed: WaitForFirstConsumer claims are the scheduler's, and
	// claims of other provisioners' classes are none of stickyvol's business.
	wffcClass := fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer)
	wffcClass.Name = "stickyvol-wffc"
	otherClass := fixtures.Class(storagev1.VolumeBindingImmediate)
	otherClass.Name, otherClass.Provisioner = "other", "other.csi.example.com"
	for _, sc := range []*storagev1.StorageClass{wffcClass, otherClass} {
		if _, err := client.StorageV1().StorageClasses().Create(t.Context(), sc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	wffc, other := immediateClaim("wffc", "1Gi"), immediateClaim("other", "1Gi")
	wffc.Spec.StorageClassName, other.Spec.StorageClassName = &wffcClass.Name, &otherClass.Name

	fixtures.CreateClaims(t, client, wffc, other, immediateClaim("c1", "1Gi"), immediateClaim("c2", "1Gi"), immediateClaim("c3", "1Gi"))
	count := map[string]int{}
	for _, name := range []string{"c1", "c2", "c3"} {
		count[placedOn(t, client, name)]++
	}
	// a starts empty, b with one volume: a, then a (tie, by name), then b.
	if count["a"] != 2 || count["b"] != 1 || len(count) != 2 {
		t.Errorf("placements %v, want a:2 b:1 and none on the unusable nodes c, d, e", count)
	}
	fixtures.WaitForEvent(t, client, immediateClaim("c1", "1Gi"), v1.EventTypeNormal, "stickyvol chose node")
	for _, name := range []string{"wffc", "other"} {
		c, err := client.CoreV1().PersistentVolumeClaims("default").Get(t.Context(), name, metav1.GetOptions{})
		if err != nil || c.Annotations[provisioner.AnnSelectedNode] != "" {
			t.Errorf("%s: %v, selected node %q; want none", name, err, c.Annotations[provisioner.AnnSelectedNode])
		}
	}
}

func TestPlacementRespectsCapacity(t *testing.T) {
	small := resource.MustParse("512Mi")
	var objects []any
	objects = append(objects, usableNode("a")...)
	objects = append(objects, usableNode("b")...)
	objects = append(objects, fixtures.PVOn("pvc-1", "b"), fixtures.PVOn("pvc-2", "b"), &storagev1.CSIStorageCapacity{
		ObjectMeta:       metav1.ObjectMeta{Name: "a", Namespace: stickyvolNamespace},
		StorageClassName: "stickyvol",
		NodeTopology:     &metav1.LabelSelector{MatchLabels: map[string]string{driver.TopologyKey: "a"}},
		Capacity:         &small,
	})
	client := newClient(objects...)
	startPlacement(t, client)
	fixtures.CreateClaims(t, client, immediateClaim("big", "1Gi"), immediateClaim("tiny", "100Mi"))
	if node := placedOn(t, client, "big"); node != "b" {
		t.Errorf("1Gi claim placed on %s; node a has 512Mi left, so b (busier) it must be", node)
	}
	if node := placedOn(t, client, "tiny"); node != "a" {
		t.Errorf("100Mi claim placed on %s, want a (fits, fewer volumes)", node)
	}
}

// The provisioner of the chosen node found no room and the library removed
// the annotation: the claim goes elsewhere, not back to the same node.
func TestPlacementAvoidsNodeThatSentClaimBack(t *testing.T) {
	var objects []any
	objects = append(objects, usableNode("a")...)
	objects = append(objects, usableNode("b")...)
	objects = append(objects, fixtures.PVOn("pvc-1", "b"))
	client := newClient(objects...)
	startPlacement(t, client)
	fixtures.CreateClaims(t, client, immediateClaim("c", "1Gi"))
	if node := placedOn(t, client, "c"); node != "a" {
		t.Fatalf("placed on %s, want a", node)
	}
	c, err := client.CoreV1().PersistentVolumeClaims("default").Get(t.Context(), "c", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(c.Annotations, provisioner.AnnSelectedNode)
	if _, err := client.CoreV1().PersistentVolumeClaims("default").Update(t.Context(), c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if node := placedOn(t, client, "c"); node != "b" {
		t.Errorf("after node a sent it back, placed on %s, want b", node)
	}
}

// With no usable node the claim waits with a Warning, and is placed as soon
// as a node becomes usable, without waiting for a retry timer.
func TestPlacementWaitsForAUsableNode(t *testing.T) {
	notReady := fixtures.ReadyNode("a")
	notReady.Labels = map[string]string{driver.TopologyKey: "a"}
	notReady.Status.Conditions[0].Status = v1.ConditionFalse
	client := newClient(notReady, usableNode("a")[1])
	startPlacement(t, client)
	fixtures.CreateClaims(t, client, immediateClaim("c", "1Gi"))
	fixtures.WaitForEvent(t, client, immediateClaim("c", "1Gi"), v1.EventTypeWarning, "no node can take this claim")

	notReady.Status.Conditions[0].Status = v1.ConditionTrue
	if _, err := client.CoreV1().Nodes().UpdateStatus(t.Context(), notReady, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if node := placedOn(t, client, "c"); node != "a" {
		t.Errorf("placed on %s, want a", node)
	}
}
