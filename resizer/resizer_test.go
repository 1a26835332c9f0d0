package resizer_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/resizer"
)

const node = "node-a"

// nodeDriver is the real driver of node on a temp socket; it records the
// sizes ControllerExpandVolume is asked for.
type nodeDriver struct {
	controller csi.ControllerClient

	mu      sync.Mutex
	expands []int64
}

func startDriver(t *testing.T, capacity int64) *nodeDriver {
	t.Helper()
	nd := &nodeDriver{}
	conn, _ := fixtures.ServeDriver(t, driver.Config{NodeID: node, Capacity: capacity, Backend: driver.BackendDirectory},
		grpc.WithChainUnaryInterceptor(nd.record))
	nd.controller = csi.NewControllerClient(conn)
	return nd
}

func (nd *nodeDriver) record(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if r, ok := req.(*csi.ControllerExpandVolumeRequest); ok {
		nd.mu.Lock()
		nd.expands = append(nd.expands, r.GetCapacityRange().GetRequiredBytes())
		nd.mu.Unlock()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// expandCalls returns the sizes ControllerExpandVolume was asked for so far.
func (nd *nodeDriver) expandCalls() []int64 {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return slices.Clone(nd.expands)
}

// createVolume makes a volume of size on the driver, as provisioning would.
func (nd *nodeDriver) createVolume(t *testing.T, name, size string) {
	t.Helper()
	q := resource.MustParse(size)
	_, err := nd.controller.CreateVolume(t.Context(), &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: q.Value()},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// volumeSize is the size the driver records for a volume.
func (nd *nodeDriver) volumeSize(t *testing.T, name string) int64 {
	t.Helper()
	resp, err := nd.controller.ListVolumes(t.Context(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range resp.GetEntries() {
		if e.GetVolume().GetVolumeId() == name {
			return e.GetVolume().GetCapacityBytes()
		}
	}
	t.Fatalf("the driver has no volume %s", name)
	return 0
}

// classes are "stickyvol", which allows expansion, and "fixed", which does
// not.
func classes() []runtime.Object {
	growing := fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer)
	growing.AllowVolumeExpansion = ptr.To(true)
	fixed := fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer)
	fixed.Name = "fixed"
	return []runtime.Object{growing, fixed}
}

// boundPair is a claim of size have bound to its PV on pvNode, selected to
// selected, asking for want.
func boundPair(name, pvNode, selected, have, want string) (*v1.PersistentVolumeClaim, *v1.PersistentVolume) {
	claim := fixtures.Claim(name, selected, want, v1.ReadWriteOnce)
	pv := fixtures.PVOn("pvc-"+string(claim.UID), pvNode)
	claim.Spec.VolumeName = pv.Name
	claim.Status = v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound, AccessModes: claim.Spec.AccessModes,
		Capacity: v1.ResourceList{v1.ResourceStorage: resource.MustParse(have)}}
	pv.Spec.Capacity = v1.ResourceList{v1.ResourceStorage: resource.MustParse(have)}
	pv.Spec.AccessModes = claim.Spec.AccessModes
	pv.Spec.StorageClassName = *claim.Spec.StorageClassName
	pv.Spec.ClaimRef = &v1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID}
	pv.Status.Phase = v1.VolumeBound
	return claim, pv
}

type options struct {
	retryStart, retryMax time.Duration
}

// startResizer runs a resizer for node on kube and nd until the returned
// stop is called (or the test ends).
func startResizer(t *testing.T, kube kubernetes.Interface, nd *nodeDriver, o options) (stop func()) {
	t.Helper()
	factory := informers.NewSharedInformerFactory(kube, 0)
	r, err := resizer.New(resizer.Config{
		NodeName: node, DriverName: driver.Name, TopologyKey: driver.TopologyKey,
		ControllerClient: nd.controller, Client: kube, Informers: factory,
		RetryIntervalStart: o.retryStart, RetryIntervalMax: o.retryMax,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(fixtures.Context(t, 4))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("resizer: %v", err)
			}
			factory.Shutdown()
		})
	}
	t.Cleanup(stop)
	return stop
}

func getClaim(t *testing.T, kube kubernetes.Interface, c *v1.PersistentVolumeClaim) *v1.PersistentVolumeClaim {
	t.Helper()
	got, err := kube.CoreV1().PersistentVolumeClaims(c.Namespace).Get(t.Context(), c.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func pvCapacity(t *testing.T, kube kubernetes.Interface, name string) string {
	t.Helper()
	pv, err := kube.CoreV1().PersistentVolumes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q := pv.Spec.Capacity[v1.ResourceStorage]
	return q.String()
}

// waitForCapacity waits until the claim's status.capacity is size.
func waitForCapacity(t *testing.T, kube kubernetes.Interface, c *v1.PersistentVolumeClaim, size string) *v1.PersistentVolumeClaim {
	t.Helper()
	var got *v1.PersistentVolumeClaim
	fixtures.Eventually(t, c.Name+" at "+size, func(ctx context.Context) (bool, error) {
		var err error
		got, err = kube.CoreV1().PersistentVolumeClaims(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
		q := got.Status.Capacity[v1.ResourceStorage]
		return err == nil && q.Cmp(resource.MustParse(size)) == 0, err
	})
	return got
}

// checkDone fails unless the claim is as a finished resize to size leaves
// it: no resize status, no resize conditions, kubelet told that no node
// step is needed, and the PV at size too.
func checkDone(t *testing.T, kube kubernetes.Interface, c *v1.PersistentVolumeClaim, size string) {
	t.Helper()
	got := waitForCapacity(t, kube, c, size)
	allocated := got.Status.AllocatedResources[v1.ResourceStorage]
	if got.Status.AllocatedResourceStatuses != nil || got.Status.Conditions != nil || allocated.String() != size {
		t.Errorf("%s after growing: resize statuses %v, conditions %v, allocated %s; want none, none, %s",
			c.Name, got.Status.AllocatedResourceStatuses, got.Status.Conditions, allocated.String(), size)
	}
	if got.Annotations["volume.kubernetes.io/node-expansion-not-required"] != "true" {
		t.Errorf("%s after growing: annotations %v; kubelet is not told that no node step is needed", c.Name, got.Annotations)
	}
	if pv := pvCapacity(t, kube, c.Spec.VolumeName); pv != size {
		t.Errorf("PV %s: capacity %s, want %s", c.Spec.VolumeName, pv, size)
	}
}

// A claim grown from 1Gi to 2Gi gets its volume expanded by the driver, and
// PV and claim say 2Gi; claims that are not this node's to grow are left
// alone.
func TestGrow(t *testing.T) {
	nd := startDriver(t, 10<<30)
	claim, pv := boundPair("data", node, node, "1Gi", "2Gi")
	nd.createVolume(t, pv.Name, "1Gi")
	// Not this node's volume (the other node's agent grows it).
	otherNode, otherPV := boundPair("elsewhere", "node-b", "node-b", "1Gi", "2Gi")
	// A class that does not allow expansion (the API server refuses the
	// request; a claim that grew before the class changed stays).
	fixed, fixedPV := boundPair("fixed", node, node, "1Gi", "2Gi")
	fixed.Spec.StorageClassName = ptr.To("fixed")
	nd.createVolume(t, fixedPV.Name, "1Gi")
	// This node's PV, but the claim is not selected to it: the agent may
	// not write its status.
	unselected, unselectedPV := boundPair("unselected", node, "node-b", "1Gi", "2Gi")
	nd.createVolume(t, unselectedPV.Name, "1Gi")
	// This node's, but not asking for more.
	same, samePV := boundPair("same", node, node, "1Gi", "1Gi")
	nd.createVolume(t, samePV.Name, "1Gi")

	kube := fake.NewClientset(append(classes(), claim, pv, otherNode, otherPV, fixed, fixedPV, unselected, unselectedPV, same, samePV)...)
	startResizer(t, kube, nd, options{})

	checkDone(t, kube, claim, "2Gi")
	if got := nd.volumeSize(t, pv.Name); got != 2<<30 {
		t.Errorf("the driver's volume has %d bytes, want 2Gi", got)
	}
	fixtures.WaitForEvent(t, kube, claim, v1.EventTypeNormal, "Expanding volume "+pv.Name+" from 1Gi to 2Gi")
	fixtures.WaitForEvent(t, kube, claim, v1.EventTypeNormal, "Volume "+pv.Name+" is now 2Gi")
	fixtures.WaitForEvent(t, kube, unselected, v1.EventTypeWarning, `annotation volume.kubernetes.io/selected-node is "node-b", not this node node-a`)

	for _, c := range []*v1.PersistentVolumeClaim{otherNode, fixed, unselected, same} {
		got := getClaim(t, kube, c)
		capacity := got.Status.Capacity[v1.ResourceStorage]
		if capacity.String() != "1Gi" || got.Status.AllocatedResourceStatuses != nil || got.Status.Conditions != nil {
			t.Errorf("%s: status %+v; want it untouched", c.Name, got.Status)
		}
		if pv := pvCapacity(t, kube, c.Spec.VolumeName); pv != "1Gi" {
			t.Errorf("%s: PV capacity %s, want 1Gi", c.Name, pv)
		}
	}
	if got := nd.expandCalls(); !slices.Equal(got, []int64{2 << 30}) {
		t.Errorf("ControllerExpandVolume asked for %v, want 2Gi once", got)
	}
}

// A claim the node has no room for gets a Warning event with the driver's
// message and is tried again with growing pauses, not in a loop; once there
// is room it grows.
func TestNoRoom(t *testing.T) {
	nd := startDriver(t, 2560<<20) // 2.5Gi: 1Gi each, and no room for 1Gi more
	claim, pv := boundPair("data", node, node, "1Gi", "2Gi")
	nd.createVolume(t, pv.Name, "1Gi")
	nd.createVolume(t, "pvc-other", "1Gi")
	kube := fake.NewClientset(append(classes(), claim, pv)...)
	startResizer(t, kube, nd, options{retryStart: 100 * time.Millisecond, retryMax: time.Second})

	fixtures.WaitForEvent(t, kube, claim, v1.EventTypeWarning, "not enough capacity on this node")
	time.Sleep(2 * time.Second)
	// Tries at 0, 0.1, 0.3, 0.7 and 1.5 s (a pause doubling from 100 ms);
	// a loop would have made thousands.
	if n := len(nd.expandCalls()); n < 3 || n > 7 {
		t.Errorf("%d calls in 2 s with a backoff from 100 ms; want 3 to 7", n)
	}
	got := getClaim(t, kube, claim)
	var conditions []v1.PersistentVolumeClaimConditionType
	for _, c := range got.Status.Conditions {
		conditions = append(conditions, c.Type)
	}
	allocated := got.Status.AllocatedResources[v1.ResourceStorage]
	if got.Status.AllocatedResourceStatuses[v1.ResourceStorage] != v1.PersistentVolumeClaimControllerResizeInProgress ||
		allocated.String() != "2Gi" ||
		!slices.Equal(conditions, []v1.PersistentVolumeClaimConditionType{v1.PersistentVolumeClaimResizing, v1.PersistentVolumeClaimControllerResizeError}) {
		t.Errorf("while there is no room: status %+v; want ControllerResizeInProgress for 2Gi, Resizing and ControllerResizeError", got.Status)
	}

	if _, err := nd.controller.DeleteVolume(t.Context(), &csi.DeleteVolumeRequest{VolumeId: "pvc-other"}); err != nil {
		t.Fatal(err)
	}
	checkDone(t, kube, claim, "2Gi")
}

// A size no retry can give marks the claim ControllerResizeInfeasible and
// is not tried again; asking for another size recovers (KEP-1790).
func TestInfeasible(t *testing.T) {
	nd := startDriver(t, 10<<30)
	// More than CSI can carry: refused before the driver is asked.
	huge, hugePV := boundPair("huge", node, node, "1Gi", "100E")
	nd.createVolume(t, hugePV.Name, "1Gi")
	// A volume the node does not have (a wiped data root): the driver
	// answers NotFound.
	lost, lostPV := boundPair("lost", node, node, "1Gi", "2Gi")
	kube := fake.NewClientset(append(classes(), huge, hugePV, lost, lostPV)...)
	startResizer(t, kube, nd, options{retryStart: 50 * time.Millisecond, retryMax: 100 * time.Millisecond})

	for _, c := range []*v1.PersistentVolumeClaim{huge, lost} {
		fixtures.WaitForEvent(t, kube, c, v1.EventTypeWarning, "change the claim's request to try again")
		fixtures.Eventually(t, c.Name+" ControllerResizeInfeasible", func(ctx context.Context) (bool, error) {
			got := getClaim(t, kube, c)
			return got.Status.AllocatedResourceStatuses[v1.ResourceStorage] == v1.PersistentVolumeClaimControllerResizeInfeasible, nil
		})
	}
	fixtures.WaitForEvent(t, kube, lost, v1.EventTypeWarning, "not found")
	time.Sleep(500 * time.Millisecond)
	if got := nd.expandCalls(); !slices.Equal(got, []int64{2 << 30}) {
		t.Errorf("ControllerExpandVolume asked for %v; want 2Gi once (for the lost volume), never retried", got)
	}
	got := getClaim(t, kube, lost)
	if c := got.Status.Conditions; len(c) != 1 || c[0].Type != v1.PersistentVolumeClaimControllerResizeError {
		t.Errorf("%s: conditions %v, want ControllerResizeError alone", lost.Name, c)
	}

	got = getClaim(t, kube, huge)
	got.Spec.Resources.Requests[v1.ResourceStorage] = resource.MustParse("3Gi")
	if _, err := kube.CoreV1().PersistentVolumeClaims(huge.Namespace).Update(t.Context(), got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkDone(t, kube, huge, "3Gi")
	if got := nd.expandCalls(); !slices.Equal(got, []int64{2 << 30, 3 << 30}) {
		t.Errorf("ControllerExpandVolume asked for %v, want 2Gi, then 3Gi", got)
	}
}

// An agent that stops after the driver grew the volume, before the PV and
// the claim say so, finishes the job when it starts again.
func TestRestart(t *testing.T) {
	nd := startDriver(t, 10<<30)
	claim, pv := boundPair("data", node, node, "1Gi", "2Gi")
	nd.createVolume(t, pv.Name, "1Gi")
	kube := fake.NewClientset(append(classes(), claim, pv)...)
	var pvWrites atomic.Bool
	kube.PrependReactor("patch", "persistentvolumes", func(clienttesting.Action) (bool, runtime.Object, error) {
		if pvWrites.Load() {
			return false, nil, nil
		}
		return true, nil, errors.New("the API server went away")
	})
	stop := startResizer(t, kube, nd, options{retryStart: time.Minute, retryMax: time.Minute})
	fixtures.Eventually(t, "the first expansion", func(context.Context) (bool, error) {
		return len(nd.expandCalls()) > 0, nil
	})
	stop()
	got := getClaim(t, kube, claim)
	if got.Status.AllocatedResourceStatuses[v1.ResourceStorage] != v1.PersistentVolumeClaimControllerResizeInProgress {
		t.Fatalf("after the first agent: %+v; want ControllerResizeInProgress", got.Status)
	}
	if pv := pvCapacity(t, kube, pv.Name); pv != "1Gi" {
		t.Fatalf("PV capacity %s after a failed patch", pv)
	}

	pvWrites.Store(true)
	startResizer(t, kube, nd, options{})
	checkDone(t, kube, claim, "2Gi")
	if got := nd.expandCalls(); !slices.Equal(got, []int64{2 << 30, 2 << 30}) {
		t.Errorf("ControllerExpandVolume asked for %v, want 2Gi, then 2Gi again (idempotent)", got)
	}
}

// A claim whose request grew while a resize to a smaller size was under way
// (as a stopped agent left it) is first grown to the size it was going to,
// then to the new request.
func TestRequestGrewMeanwhile(t *testing.T) {
	nd := startDriver(t, 10<<30)
	claim, pv := boundPair("data", node, node, "1Gi", "3Gi")
	claim.Status.AllocatedResources = v1.ResourceList{v1.ResourceStorage: resource.MustParse("2Gi")}
	claim.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{
		v1.ResourceStorage: v1.PersistentVolumeClaimControllerResizeInProgress}
	claim.Status.Conditions = []v1.PersistentVolumeClaimCondition{{Type: v1.PersistentVolumeClaimResizing, Status: v1.ConditionTrue}}
	nd.createVolume(t, pv.Name, "1Gi")
	kube := fake.NewClientset(append(classes(), claim, pv)...)
	startResizer(t, kube, nd, options{})

	checkDone(t, kube, claim, "3Gi")
	if got := nd.expandCalls(); !slices.Equal(got, []int64{2 << 30, 3 << 30}) {
		t.Errorf("ControllerExpandVolume asked for %v, want 2Gi (the size under way), then 3Gi", got)
	}
}
