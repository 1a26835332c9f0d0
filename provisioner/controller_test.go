package provisioner_test

import (
	"context"
	"flag"
	"fmt"
	"k8s.io/utils/ptr"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// startController runs the library's controller with a Provisioner for nd's
// node against client until the test ends, as `stickyvol node` does.
func startController(ctx context.Context, t *testing.T, client *fake.Clientset, nd *nodeDriver) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactory(client, 0)
	ctrl, err := provisioner.NewController(ctx, provisioner.ControllerConfig{
		Provisioner: provisioner.Config{NodeName: nd.name, DriverName: driver.Name,
			TopologyKey: driver.TopologyKey, ControllerClient: nd.controller},
		Client:    client,
		Informers: factory,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller Run: %v", err)
		}
	})
}

func pvFor(ctx context.Context, client *fake.Clientset, c *v1.PersistentVolumeClaim) (*v1.PersistentVolume, error) {
	return client.CoreV1().PersistentVolumes().Get(ctx, "pvc-"+string(c.UID), metav1.GetOptions{})
}

func waitForPV(t *testing.T, client *fake.Clientset, c *v1.PersistentVolumeClaim) *v1.PersistentVolume {
	t.Helper()
	var pv *v1.PersistentVolume
	fixtures.Eventually(t, "the PV of "+c.Name, func(ctx context.Context) (bool, error) {
		var err error
		pv, err = pvFor(ctx, client, c)
		return err == nil, nil
	})
	return pv
}

// Two nodes, each with its own driver and controller, as two `stickyvol
// node` processes: each claim gets its PV from the node the scheduler chose,
// and neither node makes a volume for the other's claim.
func TestControllerEndToEnd(t *testing.T) {
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), fixtures.ReadyNode("node-a"), fixtures.ReadyNode("node-b"))
	nodeA, nodeB := startDriver(t, "node-a", 10<<30), startDriver(t, "node-b", 10<<30)
	startController(fixtures.Context(t, 2), t, client, nodeA)
	startController(fixtures.Context(t, 2), t, client, nodeB)

	web0, web1 := fixtures.Claim("data-web-0", "node-a", "1Gi", v1.ReadWriteOnce), fixtures.Claim("data-web-1", "node-b", "2Gi", v1.ReadWriteOncePod)
	fixtures.CreateClaims(t, client, web0, web1)

	for _, tc := range []struct {
		claim *v1.PersistentVolumeClaim
		node  *nodeDriver
	}{{web0, nodeA}, {web1, nodeB}} {
		pv := waitForPV(t, client, tc.claim)
		if got := provisioner.NodesOf(pv, driver.TopologyKey).UnsortedList(); !slices.Equal(got, []string{tc.node.name}) {
			t.Errorf("%s: PV affinity names %v, want %s", tc.claim.Name, got, tc.node.name)
		}
		ref := pv.Spec.ClaimRef
		if ref == nil || ref.Name != tc.claim.Name || ref.Namespace != tc.claim.Namespace || ref.UID != tc.claim.UID {
			t.Errorf("%s: claimRef %+v", tc.claim.Name, ref)
		}
		if !slices.Equal(pv.Spec.AccessModes, tc.claim.Spec.AccessModes) || pv.Spec.StorageClassName != "stickyvol" {
			t.Errorf("%s: access modes %v, class %q", tc.claim.Name, pv.Spec.AccessModes, pv.Spec.StorageClassName)
		}
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != driver.Name ||
			!slices.Contains(pv.Finalizers, "external-provisioner.volume.kubernetes.io/finalizer") {
			t.Errorf("%s: annotations %v, finalizers %v", tc.claim.Name, pv.Annotations, pv.Finalizers)
		}
		if dirs := tc.node.volumeDirs(t); !slices.Equal(dirs, []string{pv.Name}) {
			t.Errorf("%s: node %s has volume directories %v, want only %s", tc.claim.Name, tc.node.name, dirs, pv.Name)
		}
	}

	t.Run("a volumeMode: Block claim gets a block PV", func(t *testing.T) {
		block := v1.PersistentVolumeBlock
		raw := fixtures.Claim("raw", "node-a", "1Gi", v1.ReadWriteOnce)
		raw.Spec.VolumeMode = &block
		fixtures.CreateClaims(t, client, raw)
		pv := waitForPV(t, client, raw)
		if m := pv.Spec.VolumeMode; m == nil || *m != v1.PersistentVolumeBlock {
			t.Errorf("PV volumeMode %v, want Block", m)
		}
		if b := pv.Spec.CSI.VolumeAttributes[driver.VolumeContextBackend]; b != driver.BackendBlock || pv.Spec.CSI.FSType != "" {
			t.Errorf("PV backend %q, fsType %q; want %s and none", b, pv.Spec.CSI.FSType, driver.BackendBlock)
		}
	})

	t.Run("refused claims (access modes, data source, size) get an event and nothing else", func(t *testing.T) {
		rwx := fixtures.Claim("shared", "node-a", "1Gi", v1.ReadWriteMany)
		// A restore of another namespace's snapshot would have started empty.
		clone, huge := fixtures.Claim("clone", "node-a", "1Gi", v1.ReadWriteOnce), fixtures.Claim("huge", "node-a", "1Gi", v1.ReadWriteOnce)
		snapshotGroup := "snapshot.storage.k8s.io"
		clone.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: &snapshotGroup, Kind: "VolumeSnapshot", Name: "nightly", Namespace: ptr.To("other")}
		huge.Spec.Resources.Requests[v1.ResourceStorage] = resource.MustParse("18446744073709551616")
		fixtures.CreateClaims(t, client, rwx, clone, huge)
		fixtures.WaitForEvent(t, client, rwx, v1.EventTypeWarning, "ReadWriteMany needs shared storage")
		fixtures.WaitForEvent(t, client, clone, v1.EventTypeWarning, "would start empty")
		fixtures.WaitForEvent(t, client, huge, v1.EventTypeWarning, "storage request 18446744073709551616")
		for _, c := range []*v1.PersistentVolumeClaim{rwx, clone, huge} {
			if _, err := pvFor(t.Context(), client, c); !apierrors.IsNotFound(err) {
				t.Errorf("%s: PV lookup = %v, want NotFound", c.Name, err)
			}
		}
		if n := nodeA.createCalls(); n != 2 {
			t.Errorf("node-a driver got %d CreateVolume calls, want 2 (data-web-0 and raw only)", n)
		}
	})

	t.Run("a claim too big for its node goes back to the scheduler", func(t *testing.T) {
		big := fixtures.Claim("big", "node-a", "20Gi", v1.ReadWriteOnce)
		fixtures.CreateClaims(t, client, big)
		fixtures.Eventually(t, "the selected-node annotation to be removed", func(ctx context.Context) (bool, error) {
			c, err := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, "big", metav1.GetOptions{})
			return err == nil && c.Annotations[provisioner.AnnSelectedNode] == "", err
		})
		fixtures.WaitForEvent(t, client, big, v1.EventTypeWarning, "has no room for this volume")
	})

	t.Run("a released PV is deleted by its own node", func(t *testing.T) {
		pv, err := pvFor(t.Context(), client, web0)
		if err != nil {
			t.Fatal(err)
		}
		pv.Status.Phase = v1.VolumeReleased
		if _, err := client.CoreV1().PersistentVolumes().UpdateStatus(t.Context(), pv, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		fixtures.Eventually(t, "the PV to be deleted", func(ctx context.Context) (bool, error) {
			_, err := pvFor(ctx, client, web0)
			return apierrors.IsNotFound(err), nil
		})
		if dirs := nodeA.volumeDirs(t); len(dirs) != 0 {
			t.Errorf("node-a still has %v", dirs)
		}
		if dirs := nodeB.volumeDirs(t); len(dirs) != 1 {
			t.Errorf("node-b has %v, want its volume untouched", dirs)
		}
	})
}

var manyClaims = flag.Int("many-claims", 100, "claims TestManyClaims provisions")

// TestManyClaims provisions a StatefulSet's worth of claims on one node
// through the library, the real driver and a fake API server, from claims
// as the scheduler leaves them (no storage-provisioner annotation yet), and
// reports the time and the API writes per claim (run with -v to see them). The fake
// API server's watch channels hold 100 events and panic when full, so with
// -race (slow consumers) keep -many-claims near the default.
func TestManyClaims(t *testing.T) {
	n := *manyClaims
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), fixtures.ReadyNode("node-a"))
	nd := startDriver(t, "node-a", 1<<40)
	startController(fixtures.Context(t, 0), t, client, nd)

	var claims []*v1.PersistentVolumeClaim
	for i := range n {
		claims = append(claims, unannotated(fmt.Sprintf("data-web-%d", i), "node-a"))
	}
	client.ClearActions()
	start := time.Now()
	fixtures.CreateClaims(t, client, claims...)
	fixtures.Eventually(t, fmt.Sprintf("%d PVs", n), func(ctx context.Context) (bool, error) {
		pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		return err == nil && len(pvs.Items) == n, err
	})
	elapsed := time.Since(start)
	if dirs := nd.volumeDirs(t); len(dirs) != n {
		t.Errorf("%d volume directories, want %d", len(dirs), n)
	}
	writes := map[string]int{}
	for _, a := range client.Actions() {
		if verb := a.GetVerb(); verb != "get" && verb != "list" && verb != "watch" {
			writes[verb+" "+a.GetResource().Resource]++
		}
	}
	t.Logf("%d claims -> PVs in %v (%.0f claims/s); API writes besides the claims themselves: %v",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), writes)
}

// TestRefusalsOncePerChange: a claim no retry can serve gets one Warning
// event per change of the claim, not one per retry. Before refusals were
// remembered, the library's backoff (1 s doubling) gave 3 events in the
// first 3.5 s and 5 in the first 30 s, then one every 5 minutes, forever.
func TestRefusalsOncePerChange(t *testing.T) {
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), fixtures.ReadyNode("node-a"))
	nd := startDriver(t, "node-a", 10<<30)
	startController(fixtures.Context(t, 2), t, client, nd)
	rwx := fixtures.Claim("shared", "node-a", "1Gi", v1.ReadWriteMany)
	fixtures.CreateClaims(t, client, rwx)

	failures := func() int {
		events, err := client.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range events.Items {
			if e.InvolvedObject.Name == rwx.Name && e.Reason == "ProvisioningFailed" {
				n += max(int(e.Count), 1)
			}
		}
		return n
	}
	fixtures.WaitForEvent(t, client, rwx, v1.EventTypeWarning, "ReadWriteMany needs shared storage")
	// Long enough for the retries after 1 s and 2 s that used to repeat it.
	time.Sleep(3500 * time.Millisecond)
	if n := failures(); n != 1 {
		t.Errorf("%d ProvisioningFailed events in 3.5 s, want 1", n)
	}

	// The user changes the claim (here a label): refused and reported again,
	// once.
	c, err := client.CoreV1().PersistentVolumeClaims("default").Get(t.Context(), rwx.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Labels = map[string]string{"edited": "yes"}
	c.ResourceVersion = "2" // as the API server would; the fake does not
	if _, err := client.CoreV1().PersistentVolumeClaims("default").Update(t.Context(), c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	fixtures.Eventually(t, "a second event after the change", func(context.Context) (bool, error) { return failures() == 2, nil })
	time.Sleep(3500 * time.Millisecond)
	if n := failures(); n != 2 {
		t.Errorf("%d ProvisioningFailed events after one change, want 2", n)
	}
	if n := nd.createCalls(); n != 0 {
		t.Errorf("the driver got %d CreateVolume calls for a refused claim", n)
	}
}
