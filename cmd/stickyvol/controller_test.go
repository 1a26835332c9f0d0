package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/stickyvol/stickyvol/driver"
)

// `stickyvol controller` against a fake API server: it becomes ready, takes
// the Lease, places a claim of an Immediate-binding class on the one node
// that runs the driver, and gives the Lease back when stopped so that a
// standby takes over at once.
func TestClusterController(t *testing.T) {
	o := &controllerOptions{identity: "controller-0", namespace: "stickyvol", qps: 20, burst: 40, metricsAddress: freeAddress(t)}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	immediate := storagev1.VolumeBindingImmediate
	class := "stickyvol-now"
	kube := fake.NewClientset(
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{driver.TopologyKey: "node-a"}},
			Status: v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{
			{Name: driver.Name, NodeID: "node-a", TopologyKeys: []string{driver.TopologyKey}}}}},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: class}, Provisioner: driver.Name, VolumeBindingMode: &immediate},
		&v1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "default"},
			Spec: v1.PersistentVolumeClaimSpec{
				AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
				StorageClassName: &class,
				Resources:        v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		},
	)
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2), ktesting.BufferLogs(false)))
	ctx, cancel := context.WithCancel(klog.NewContext(t.Context(), logger))
	defer cancel()
	c, err := newClusterController(o, kube, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.run(ctx) }()

	base := "http://" + o.metricsAddress
	poll(t, "/readyz", func(context.Context) (bool, error) {
		code, _ := get(t, base+"/readyz")
		return code == http.StatusOK, nil
	})
	if _, metrics := get(t, base+"/metrics"); !strings.Contains(metrics, "go_goroutines") {
		t.Error("/metrics lacks the Go collector")
	}
	// Without --profiling, no profiles.
	if code, _ := get(t, base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without --profiling: %d, want 404", code)
	}
	holder := func(ctx context.Context) string {
		lease, err := kube.CoordinationV1().Leases("stickyvol").Get(ctx, driver.Name, metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			return ""
		}
		return *lease.Spec.HolderIdentity
	}
	poll(t, "the Lease", func(ctx context.Context) (bool, error) { return holder(ctx) == "controller-0", nil })
	poll(t, "the claim's node", func(ctx context.Context) (bool, error) {
		claim, err := kube.CoreV1().PersistentVolumeClaims("default").Get(ctx, "data", metav1.GetOptions{})
		return err == nil && claim.Annotations["volume.kubernetes.io/selected-node"] == "node-a", nil
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the controller did not stop")
	}
	if h := holder(context.Background()); h != "" {
		t.Errorf("after shutdown the Lease is still held by %q", h)
	}
}

func TestControllerOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    controllerOptions
		want string
	}{
		{"valid", controllerOptions{identity: "c", namespace: "ns", qps: 1, burst: 1}, ""},
		{"no identity", controllerOptions{namespace: "ns", qps: 1, burst: 1}, "--identity"},
		{"no namespace", controllerOptions{identity: "c", qps: 1, burst: 1}, "--namespace"},
		{"zero qps", controllerOptions{identity: "c", namespace: "ns", burst: 1}, "must be positive"},
		{"profiles served nowhere", controllerOptions{identity: "c", namespace: "ns", qps: 1, burst: 1, profiling: true}, "--profiling needs --metrics-address"},
	} {
		err := tc.o.validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
