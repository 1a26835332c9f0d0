package provisioner_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// unannotated is fixtures.Claim as the scheduler leaves it, before the PV
// controller has written the storage-provisioner annotations.
func unannotated(name, node string) *v1.PersistentVolumeClaim {
	c := fixtures.Claim(name, node, "1Gi", v1.ReadWriteOnce)
	delete(c.Annotations, provisioner.AnnStorageProvisioner)
	delete(c.Annotations, provisioner.AnnBetaStorageProvisioner)
	return c
}

func getClaim(t *testing.T, client *fake.Clientset, name string) *v1.PersistentVolumeClaim {
	t.Helper()
	c, err := client.CoreV1().PersistentVolumeClaims("default").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// claimWrites keeps the API server's side of claim updates that the fake
// leaves out: an update at another resourceVersion than the stored one is a
// Conflict, and each write gets a new resourceVersion. It records the
// writes that succeeded, by claim, and fails the test if one replaces a
// storage-provisioner value with another.
type claimWrites struct {
	t       *testing.T
	client  *fake.Clientset
	mu      sync.Mutex
	version int
	// byWriter counts successful updates per claim and writer (the
	// request's field manager: "" for the agent, "kcm" for the stand-in);
	// conflicts counts the updates refused with a Conflict, per writer.
	byWriter  map[string]map[string]int
	conflicts map[string]int
	// before, when set, runs before an update is applied, for a test to
	// change the stored claim under it.
	before func(claim *v1.PersistentVolumeClaim)
}

func trackClaimWrites(t *testing.T, client *fake.Clientset) *claimWrites {
	w := &claimWrites{t: t, client: client, byWriter: map[string]map[string]int{}, conflicts: map[string]int{}}
	client.PrependReactor("update", "persistentvolumeclaims", w.react)
	return w
}

func (w *claimWrites) react(action k8stesting.Action) (bool, runtime.Object, error) {
	update := action.(k8stesting.UpdateActionImpl)
	if update.GetSubresource() != "" {
		return false, nil, nil
	}
	claim := update.GetObject().(*v1.PersistentVolumeClaim).DeepCopy()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.before != nil {
		w.before(claim)
	}
	gvr := v1.SchemeGroupVersion.WithResource("persistentvolumeclaims")
	obj, err := w.client.Tracker().Get(gvr, claim.Namespace, claim.Name)
	if err != nil {
		return true, nil, err
	}
	stored := obj.(*v1.PersistentVolumeClaim)
	if stored.ResourceVersion != claim.ResourceVersion {
		w.conflicts[update.UpdateOptions.FieldManager]++
		return true, nil, apierrors.NewConflict(gvr.GroupResource(), claim.Name,
			fmt.Errorf("stored at %q, written at %q", stored.ResourceVersion, claim.ResourceVersion))
	}
	if was, now := stored.Annotations[provisioner.AnnStorageProvisioner], claim.Annotations[provisioner.AnnStorageProvisioner]; was != "" && was != now {
		w.t.Errorf("%s: %s changed from %q to %q", claim.Name, provisioner.AnnStorageProvisioner, was, now)
	}
	w.version++
	claim.ResourceVersion = strconv.Itoa(w.version)
	if err := w.client.Tracker().Update(gvr, claim, claim.Namespace); err != nil {
		return true, nil, err
	}
	writer := update.UpdateOptions.FieldManager
	if w.byWriter[claim.Name] == nil {
		w.byWriter[claim.Name] = map[string]int{}
	}
	w.byWriter[claim.Name][writer]++
	return true, claim, nil
}

func (w *claimWrites) count(claim, writer string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.byWriter[claim][writer]
}

func (w *claimWrites) conflicted(writer string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conflicts[writer]
}

// kcmAnnotator stands in for the PV controller's part: from its own
// informer, for every claim of the class, it does what setClaimProvisioner
// does (pkg/controller/volume/persistentvolume/pv_controller.go): nothing if
// volume.kubernetes.io/storage-provisioner already names the class's
// provisioner, else an Update that sets both annotations. On a Conflict it
// tries again with the claim as its cache has it next, as its next sync would.
func kcmAnnotator(ctx context.Context, t *testing.T, client *fake.Clientset, provisionerName string) {
	factory := informers.NewSharedInformerFactory(client, 0)
	lister := factory.Core().V1().PersistentVolumeClaims().Lister()
	annotate := func(name string) {
		for ctx.Err() == nil {
			claim, err := lister.PersistentVolumeClaims("default").Get(name)
			if err != nil {
				return
			}
			if claim.Annotations[provisioner.AnnStorageProvisioner] == provisionerName {
				return
			}
			claim = claim.DeepCopy()
			claim.Annotations[provisioner.AnnBetaStorageProvisioner] = provisionerName
			claim.Annotations[provisioner.AnnStorageProvisioner] = provisionerName
			_, err = client.CoreV1().PersistentVolumeClaims("default").Update(ctx, claim, metav1.UpdateOptions{FieldManager: "kcm"})
			if !apierrors.IsConflict(err) {
				if err != nil && ctx.Err() == nil {
					t.Errorf("kcm stand-in: %v", err)
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	_, err := factory.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { go annotate(obj.(*v1.PersistentVolumeClaim).Name) },
	})
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	t.Cleanup(factory.Shutdown)
}

// A claim selected to this node is provisioned without the PV
// controller's annotations and without any write to the claim: the agent's
// cache shows it handed over.
func TestHandOverToTheLibrary(t *testing.T) {
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), fixtures.ReadyNode("node-a"))
	writes := trackClaimWrites(t, client)
	startController(fixtures.Context(t, 2), t, client, startDriver(t, "node-a", 10<<30))

	c := unannotated("data-web-0", "node-a")
	fixtures.CreateClaims(t, client, c)
	waitForPV(t, client, c)
	if n := writes.count(c.Name, "") + writes.conflicted(""); n != 0 {
		t.Errorf("%d claim updates by the agent, want none", n)
	}
	if got := getClaim(t, client, c.Name); got.Annotations[provisioner.AnnStorageProvisioner] != "" {
		t.Errorf("the claim on the API server has %s = %q; only the PV controller writes it",
			provisioner.AnnStorageProvisioner, got.Annotations[provisioner.AnnStorageProvisioner])
	}
}

// Claims the PV controller would not hand to stickyvol on this node, or has
// already handed to someone else, are not provisioned.
func TestHandOverLeavesOtherClaimsAlone(t *testing.T) {
	other := fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer)
	other.Name, other.Provisioner = "other", "other.example.com"
	immediate := fixtures.Class(storagev1.VolumeBindingImmediate)
	immediate.Name = "immediate"
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), other, immediate,
		fixtures.ReadyNode("node-a"))
	writes := trackClaimWrites(t, client)

	otherNode := unannotated("other-node", "node-b")
	unselected := unannotated("unselected", "")
	otherClass := unannotated("other-class", "node-a")
	otherClass.Spec.StorageClassName = &other.Name
	immediateClass := unannotated("immediate", "node-a")
	immediateClass.Spec.StorageClassName = &immediate.Name
	annotated := unannotated("annotated", "node-a")
	annotated.Annotations[provisioner.AnnStorageProvisioner] = "someone.example.com"
	betaOnly := unannotated("beta-only", "node-a")
	betaOnly.Annotations[provisioner.AnnBetaStorageProvisioner] = "someone.example.com"
	bound := unannotated("bound", "node-a")
	bound.Spec.VolumeName, bound.Status.Phase = "pv-of-bound", v1.ClaimBound
	deleting := unannotated("deleting", "node-a")
	deleting.DeletionTimestamp, deleting.Finalizers = &metav1.Time{Time: time.Now()}, []string{"kubernetes.io/pvc-protection"}
	alone := []*v1.PersistentVolumeClaim{otherNode, unselected, otherClass, immediateClass, annotated, betaOnly, bound, deleting}
	fixtures.CreateClaims(t, client, alone...)

	startController(fixtures.Context(t, 2), t, client, startDriver(t, "node-a", 10<<30))
	// A claim that is provisioned, after the others are in the queue; with
	// the workers' head start, a little more for the last of them.
	mine := unannotated("mine", "node-a")
	fixtures.CreateClaims(t, client, mine)
	waitForPV(t, client, mine)
	time.Sleep(200 * time.Millisecond)

	for _, c := range alone {
		if n := writes.count(c.Name, ""); n != 0 {
			t.Errorf("%s: %d updates by the agent, want none", c.Name, n)
		}
		if _, err := pvFor(t.Context(), client, c); !apierrors.IsNotFound(err) {
			t.Errorf("%s: PV lookup = %v, want NotFound", c.Name, err)
		}
	}
}

// The PV controller annotates the claims while the agent provisions them:
// it writes each claim once, never loses a write to a Conflict (which it
// would report as a Warning ProvisioningFailed event), and the agent writes
// no claim. (claimWrites fails the test if a value is ever replaced.)
func TestHandOverWithTheControllerManager(t *testing.T) {
	client := fake.NewClientset(fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), fixtures.ReadyNode("node-a"))
	writes := trackClaimWrites(t, client)
	ctx := fixtures.Context(t, 0)
	kcmAnnotator(ctx, t, client, driver.Name)
	startController(ctx, t, client, startDriver(t, "node-a", 1<<40))

	var claims []*v1.PersistentVolumeClaim
	for i := range 40 {
		claims = append(claims, unannotated(fmt.Sprintf("data-web-%d", i), "node-a"))
	}
	fixtures.CreateClaims(t, client, claims...)
	for _, c := range claims {
		waitForPV(t, client, c)
		fixtures.Eventually(t, "the PV controller's annotations on "+c.Name, func(ctx context.Context) (bool, error) {
			got, err := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, c.Name, metav1.GetOptions{})
			return err == nil && got.Annotations[provisioner.AnnStorageProvisioner] == driver.Name &&
				got.Annotations[provisioner.AnnBetaStorageProvisioner] == driver.Name, err
		})
		if agent, kcm := writes.count(c.Name, ""), writes.count(c.Name, "kcm"); agent != 0 || kcm != 1 {
			t.Errorf("%s: %d writes by the agent and %d by the PV controller, want 0 and 1", c.Name, agent, kcm)
		}
	}
	if n := writes.conflicted("kcm"); n != 0 {
		t.Errorf("the PV controller lost %d writes to a Conflict, want none", n)
	}
}
