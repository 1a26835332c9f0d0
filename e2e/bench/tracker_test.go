package bench

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/stickyvol/stickyvol/provisioner"
)

// TestTrackerTimes feeds the tracker's handlers the events of one claim's
// life, each at a known time, and checks the figures drawn from them.
func TestTrackerTimes(t *testing.T) {
	tr := &tracker{ns: "bench", claims: map[string]*claimTimes{}}
	t0 := time.Date(2026, 9, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	claim := testClaim("data-bench-0", Stickyvol, "uid-0")
	pv := &v1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-uid-0"},
		Spec: v1.PersistentVolumeSpec{ClaimRef: &v1.ObjectReference{Namespace: "bench", Name: "data-bench-0", UID: "uid-0"}}}
	elsewhere := pv.DeepCopy()
	elsewhere.Name, elsewhere.Spec.ClaimRef.Namespace = "pvc-other", "other"

	tr.observeClaim(claim.DeepCopy(), at(0))
	claim.Annotations = map[string]string{provisioner.AnnSelectedNode: "kwok-node-1"}
	tr.observeClaim(claim.DeepCopy(), at(100))
	tr.observeClaim(claim.DeepCopy(), at(150)) // another update: no new step
	claim.Annotations[annStorageProvisioner] = "hostpath.stickyvol.dev"
	tr.observeClaim(claim.DeepCopy(), at(2100))
	tr.observeVolume(pv, at(2400), false)
	tr.observeVolume(elsewhere, at(2450), false)
	claim.Status.Phase = v1.ClaimBound
	tr.observeClaim(claim.DeepCopy(), at(3000))
	if p := countProgress(tr.snapshot()); p != (progress{claims: 1, bound: 1, volumes: 1}) {
		t.Errorf("progress %+v after Bound, want 1 claim, Bound, with a PV", p)
	}

	lat := claimLatencies(tr.snapshot())
	for name, got := range map[string][]float64{
		"selected-node -> PV":         lat.selectedToPV,
		"selected-node -> annotation": lat.selectedToAnnotation,
		"created -> Bound":            lat.createdToBound,
	} {
		want := map[string]float64{"selected-node -> PV": 2300, "selected-node -> annotation": 2000, "created -> Bound": 3000}[name]
		if len(got) != 1 || got[0] != want {
			t.Errorf("%s = %v ms, want [%v]", name, got, want)
		}
	}
	if !lat.lastBound.Equal(at(3000)) {
		t.Errorf("last Bound at %s, want %s", lat.lastBound, at(3000))
	}

	// A delete seen only as a tombstone counts too.
	tr.observeVolume(cache.DeletedFinalStateUnknown{Key: pv.Name, Obj: pv}, at(9000), true)
	if p := countProgress(tr.snapshot()); p.volumesGone != 1 {
		t.Errorf("progress %+v after the PV went, want it gone", p)
	}
	if got := lastVolumeGone(tr.snapshot()); !got.Equal(at(9000)) {
		t.Errorf("last PV gone at %s, want %s", got, at(9000))
	}
}
