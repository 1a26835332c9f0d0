package capacity_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/stickyvol/stickyvol/capacity"
	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

const (
	node      = "node-a"
	namespace = "stickyvol"
	// nodeCapacity is what the test driver may hand out.
	nodeCapacity = 10 << 30
)

// agentPod is the agent's pod, made by its DaemonSet.
func agentPod() *v1.Pod {
	yes := true
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "stickyvol-node-x1", Namespace: namespace, UID: "uid-pod",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "stickyvol-node",
			UID: "uid-ds", Controller: &yes, BlockOwnerDeletion: &yes}}}}
}

func class(name, provisionerName string, params map[string]string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisionerName, Parameters: params}
}

// world is a publisher for node on a fake API server and the real driver.
type world struct {
	kube *fake.Clientset
	csi  csi.ControllerClient
	pub  *capacity.Publisher

	mu     sync.Mutex
	writes map[string]int // by verb
}

// start runs a publisher until the test ends. change adjusts its Config.
func start(t *testing.T, change func(*capacity.Config), objects ...runtime.Object) *world {
	t.Helper()
	w := &world{kube: fake.NewClientset(objects...), writes: map[string]int{}}
	w.csi = csi.NewControllerClient(fixtures.StartDriver(t, node, nodeCapacity).Conn)
	// The fake API server does not make up names for generateName, nor
	// UIDs and creation times: do what kube-apiserver would.
	var made int
	w.kube.PrependReactor("create", "csistoragecapacities", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*storagev1.CSIStorageCapacity)
		if o.Name == "" {
			made++
			o.Name = fmt.Sprintf("%s%03d", o.GenerateName, made)
			o.UID = types.UID("uid-" + o.Name)
			o.CreationTimestamp = metav1.NewTime(time.Now().Add(time.Duration(made) * time.Second))
		}
		return false, nil, nil
	})
	w.kube.PrependReactor("*", "csistoragecapacities", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if verb := a.GetVerb(); verb == "create" || verb == "update" || verb == "patch" || verb == "delete" {
			w.mu.Lock()
			w.writes[verb]++
			w.mu.Unlock()
		}
		return false, nil, nil
	})
	cfg := capacity.Config{
		NodeName: node, DriverName: driver.Name, TopologyKey: driver.TopologyKey, Namespace: namespace,
		ControllerClient: w.csi, Client: w.kube, Informers: informers.NewSharedInformerFactory(w.kube, 0),
		OwnerPod: agentPod().Name, MinInterval: 200 * time.Millisecond,
	}
	if change != nil {
		change(&cfg)
	}
	var err error
	w.pub, err = capacity.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(fixtures.Context(t, 4))
	done := make(chan error, 1)
	go func() { done <- w.pub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w
}

// writeCount is the number of writes of CSIStorageCapacity objects so far.
func (w *world) writeCount() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.writes)
}

// objects lists the CSIStorageCapacity objects of the namespace by class.
func (w *world) objects(ctx context.Context) (map[string][]storagev1.CSIStorageCapacity, error) {
	list, err := w.kube.StorageV1().CSIStorageCapacities(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	byClass := map[string][]storagev1.CSIStorageCapacity{}
	for _, o := range list.Items {
		byClass[o.StorageClassName] = append(byClass[o.StorageClassName], o)
	}
	return byClass, nil
}

// waitFor waits until each class in want has exactly one object, publishing
// the given free bytes, and no other class has any.
func (w *world) waitFor(t *testing.T, want map[string]int64) map[string]storagev1.CSIStorageCapacity {
	t.Helper()
	var got map[string][]storagev1.CSIStorageCapacity
	fixtures.Eventually(t, fmt.Sprintf("objects %v", want), func(ctx context.Context) (bool, error) {
		var err error
		if got, err = w.objects(ctx); err != nil || len(got) != len(want) {
			return false, err
		}
		for class, free := range want {
			objs := got[class]
			if len(objs) != 1 || objs[0].Capacity == nil || objs[0].Capacity.Value() != free {
				return false, nil
			}
		}
		return true, nil
	})
	one := map[string]storagev1.CSIStorageCapacity{}
	for class, objs := range got {
		one[class] = objs[0]
	}
	return one
}

func (w *world) createVolume(t *testing.T, name string, size int64) {
	t.Helper()
	_, err := w.csi.CreateVolume(t.Context(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER}}}})
	if err != nil {
		t.Fatal(err)
	}
}

// Every class of the driver gets one object that selects this node and says
// what GetCapacity says, owned by the agents' DaemonSet; other drivers'
// classes get none.
func TestPublishesEveryClass(t *testing.T) {
	w := start(t, nil, agentPod(),
		class("stickyvol", driver.Name, map[string]string{"directoryMode": "0750"}),
		// nodeLossPolicy is the provisioner's: the driver would refuse it.
		class("recreate", driver.Name, map[string]string{provisioner.ParamNodeLossPolicy: provisioner.NodeLossRecreate}),
		// Refused by the driver: published all the same, so that the
		// scheduler picks a node and the provisioner explains the refusal.
		class("bogus", driver.Name, map[string]string{"size": "1G"}),
		class("standard", "rancher.io/local-path", nil))
	got := w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity, "recreate": nodeCapacity, "bogus": nodeCapacity})

	for name, o := range got {
		if o.Namespace != namespace || o.GenerateName != "csisc-" {
			t.Errorf("%s: object %s/%s generateName %q, want one made from csisc- in %s", name, o.Namespace, o.Name, o.GenerateName, namespace)
		}
		wantTopology := &metav1.LabelSelector{MatchLabels: map[string]string{driver.TopologyKey: node}}
		if fmt.Sprint(o.NodeTopology) != fmt.Sprint(wantTopology) {
			t.Errorf("%s: nodeTopology %v, want %v", name, o.NodeTopology, wantTopology)
		}
		if o.MaximumVolumeSize == nil || o.MaximumVolumeSize.Value() != nodeCapacity {
			t.Errorf("%s: maximumVolumeSize %v, want %d", name, o.MaximumVolumeSize, nodeCapacity)
		}
		if want := capacity.Labels(driver.Name, node); !maps.Equal(o.Labels, want) ||
			o.Labels["csi.storage.k8s.io/managed-by"] != "stickyvol-"+node {
			t.Errorf("%s: labels %v, want %v", name, o.Labels, want)
		}
		wantOwner := []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "stickyvol-node", UID: "uid-ds"}}
		if !slices.Equal(o.OwnerReferences, wantOwner) {
			t.Errorf("%s: owner references %v, want the DaemonSet, without blocking its deletion: %v", name, o.OwnerReferences, wantOwner)
		}
	}
}

// The objects follow the volumes; a burst of changes makes one write per
// pass, not one per volume; a pass that finds nothing changed writes
// nothing.
func TestFollowsVolumesInFewWrites(t *testing.T) {
	w := start(t, func(c *capacity.Config) { c.MinInterval = time.Second }, agentPod(), class("stickyvol", driver.Name, nil))
	w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity})
	if got := w.writeCount(); !maps.Equal(got, map[string]int{"create": 1}) {
		t.Fatalf("writes to publish: %v, want one create", got)
	}

	// 30 volumes in a burst, each followed by a notification, as the
	// driver sends them.
	const volumes, size = 30, 64 << 20
	began := time.Now()
	for i := range volumes {
		w.createVolume(t, fmt.Sprintf("pvc-%d", i), size)
		w.pub.Notify()
	}
	burst := time.Since(began)
	w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity - volumes*size})
	// One pass per second at most while the burst lasts (the first may
	// come right after the create), and one after it that sees the rest.
	most := int(burst/time.Second) + 2
	if got := w.writeCount(); got["update"] > most || got["create"] != 1 || got["delete"] != 0 {
		t.Errorf("writes after a burst of %d volumes in %s: %v, want at most %d updates", volumes, burst, got, most)
	}

	before := w.writeCount()
	for range 5 {
		w.pub.Notify()
	}
	time.Sleep(3 * time.Second) // passes come at most once a second
	if got := w.writeCount(); !maps.Equal(got, before) {
		t.Errorf("writes when nothing changed: %v, want %v as before", got, before)
	}

	if _, err := w.csi.DeleteVolume(t.Context(), &csi.DeleteVolumeRequest{VolumeId: "pvc-0"}); err != nil {
		t.Fatal(err)
	}
	w.pub.Notify()
	w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity - (volumes-1)*size})
}

// A class added gets its object at once, a class deleted loses it; an
// object deleted by someone else is made again.
func TestFollowsClasses(t *testing.T) {
	w := start(t, nil, agentPod(), class("stickyvol", driver.Name, nil))
	w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity})
	classes := w.kube.StorageV1().StorageClasses()
	if _, err := classes.Create(t.Context(), class("fast", driver.Name, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity, "fast": nodeCapacity})
	if err := classes.Delete(t.Context(), "stickyvol", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, map[string]int64{"fast": nodeCapacity})
	gone := got["fast"]
	if err := w.kube.StorageV1().CSIStorageCapacities(namespace).Delete(t.Context(), gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if again := w.waitFor(t, map[string]int64{"fast": nodeCapacity}); again["fast"].Name == gone.Name {
		t.Errorf("object %s is still there after it was deleted", gone.Name)
	}
}

// What a former agent or a lost reply left behind is cleaned up: of two
// objects for one class the older stays, an object of a class that is gone
// goes, and so does one whose topology does not name exactly this node.
// Another node's objects are left alone.
func TestCleansUp(t *testing.T) {
	mine := func(name, class string, age time.Duration, topology map[string]string) *storagev1.CSIStorageCapacity {
		return &storagev1.CSIStorageCapacity{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, UID: types.UID("uid-" + name),
				Labels: capacity.Labels(driver.Name, node), CreationTimestamp: metav1.NewTime(time.Now().Add(-age))},
			NodeTopology:     &metav1.LabelSelector{MatchLabels: topology},
			StorageClassName: class,
			Capacity:         resource.NewQuantity(1, resource.BinarySI),
		}
	}
	here := map[string]string{driver.TopologyKey: node}
	other := mine("other-node", "stickyvol", time.Hour, map[string]string{driver.TopologyKey: "node-b"})
	other.Labels = capacity.Labels(driver.Name, "node-b")
	// A second between passes: the count of writes below is that of the
	// first pass, not of one that ran before the informer saw its deletes.
	w := start(t, func(c *capacity.Config) { c.MinInterval = time.Second }, agentPod(), class("stickyvol", driver.Name, nil),
		mine("old", "stickyvol", time.Hour, here),
		mine("new", "stickyvol", time.Minute, here),
		mine("class-gone", "fast", time.Hour, here),
		mine("wide", "stickyvol", 2*time.Hour, map[string]string{driver.TopologyKey: node, "zone": "a"}),
		other)
	fixtures.Eventually(t, "only the old object and the other node's", func(ctx context.Context) (bool, error) {
		got, err := w.objects(ctx)
		if err != nil || len(got) != 1 || len(got["stickyvol"]) != 2 {
			return false, err
		}
		var names []string
		for _, o := range got["stickyvol"] {
			names = append(names, o.Name)
			if o.Name == "old" && o.Capacity.Value() != nodeCapacity {
				return false, nil
			}
		}
		slices.Sort(names)
		return slices.Equal(names, []string{"old", "other-node"}), nil
	})
	if got := w.writeCount(); !maps.Equal(got, map[string]int{"update": 1, "delete": 3}) {
		t.Errorf("writes %v, want the old object updated and three deleted", got)
	}
}

// Without an owner pod (an agent outside a cluster) the objects have no
// owner; a pod that nothing controls owns them itself; when the agents'
// DaemonSet is made anew (deleted with --cascade=orphan), the objects the
// garbage collector deletes come back owned by the new one.
func TestOwner(t *testing.T) {
	t.Run("no pod", func(t *testing.T) {
		w := start(t, func(c *capacity.Config) { c.OwnerPod = "" }, class("stickyvol", driver.Name, nil))
		if o := w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity})["stickyvol"]; len(o.OwnerReferences) != 0 {
			t.Errorf("owner references %v, want none", o.OwnerReferences)
		}
	})
	t.Run("bare pod", func(t *testing.T) {
		pod := agentPod()
		pod.OwnerReferences = nil
		w := start(t, nil, pod, class("stickyvol", driver.Name, nil))
		o := w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity})["stickyvol"]
		want := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}}
		if !slices.Equal(o.OwnerReferences, want) {
			t.Errorf("owner references %v, want %v", o.OwnerReferences, want)
		}
	})
	t.Run("new DaemonSet", func(t *testing.T) {
		w := start(t, nil, agentPod(), class("stickyvol", driver.Name, nil))
		old := w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity})["stickyvol"]
		pod := agentPod()
		pod.OwnerReferences[0].UID = "uid-ds-2"
		if _, err := w.kube.CoreV1().Pods(namespace).Update(t.Context(), pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// What the garbage collector does once the old DaemonSet is gone.
		if err := w.kube.StorageV1().CSIStorageCapacities(namespace).Delete(t.Context(), old.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		fixtures.Eventually(t, "an object owned by the new DaemonSet", func(ctx context.Context) (bool, error) {
			got, err := w.objects(ctx)
			if err != nil || len(got["stickyvol"]) != 1 {
				return false, err
			}
			refs := got["stickyvol"][0].OwnerReferences
			return len(refs) == 1 && refs[0].UID == "uid-ds-2", nil
		})
	})
}

func TestManagedBy(t *testing.T) {
	if got := capacity.ManagedBy("node-a"); got != "stickyvol-node-a" {
		t.Errorf("ManagedBy(node-a) = %q", got)
	}
	long := "node-with-a-name-of-sixty-three-characters-which-is-the-limit-x"
	got := capacity.ManagedBy(long)
	if len(got) != 63 || got != capacity.ManagedBy(long) || got == capacity.ManagedBy(long[:62]+"y") {
		t.Errorf("ManagedBy of a 63-character name = %q (%d characters), want 63, stable and unique", got, len(got))
	}
}

// An agent that no longer publishes takes its node's objects away, and
// only those.
func TestWithdraw(t *testing.T) {
	object := func(name, node string) *storagev1.CSIStorageCapacity {
		return &storagev1.CSIStorageCapacity{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, UID: types.UID("uid-" + name),
				Labels: capacity.Labels(driver.Name, node)},
			NodeTopology:     &metav1.LabelSelector{MatchLabels: map[string]string{driver.TopologyKey: node}},
			StorageClassName: "stickyvol",
		}
	}
	kube := fake.NewClientset(object("a-1", node), object("a-2", node), object("b-1", "node-b"))
	if err := capacity.Withdraw(fixtures.Context(t, 2), kube, namespace, driver.Name, node); err != nil {
		t.Fatal(err)
	}
	list, err := kube.StorageV1().CSIStorageCapacities(namespace).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "b-1" {
		t.Errorf("left %v, want only node-b's object", list.Items)
	}
}

// Less room is published without waiting out MinInterval (NotifyNow),
// however many volumes come in a row; more room waits for it.
func TestLessRoomAtOnce(t *testing.T) {
	w := start(t, func(c *capacity.Config) { c.MinInterval = time.Hour }, agentPod(), class("stickyvol", driver.Name, nil))
	w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity})
	const size = 64 << 20
	for i := range 3 {
		w.createVolume(t, fmt.Sprintf("pvc-%d", i), size)
		w.pub.NotifyNow()
		// Within Eventually's wait, far less than the hour of MinInterval.
		w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity - int64(i+1)*size})
	}
	if _, err := w.csi.DeleteVolume(t.Context(), &csi.DeleteVolumeRequest{VolumeId: "pvc-0"}); err != nil {
		t.Fatal(err)
	}
	w.pub.Notify()
	time.Sleep(time.Second)
	w.waitFor(t, map[string]int64{"stickyvol": nodeCapacity - 3*size})
}
