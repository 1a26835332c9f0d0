package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/stickyvol/stickyvol/provisioner"
)

// annStorageProvisioner is what kube-controller-manager's PV controller
// writes on a claim it leaves to an external provisioner; the provisioning
// library waits for it.
const annStorageProvisioner = "volume.kubernetes.io/storage-provisioner"

// claimTimes are the moments the bench saw a claim reach each step: the
// time.Now() of the informer event that first showed it. Each includes the
// watch's delivery delay, the same for every step and every provisioner.
type claimTimes struct {
	created   time.Time // the claim appeared
	selected  time.Time // the scheduler's selected-node annotation appeared
	annotated time.Time // kube-controller-manager's storage-provisioner annotation appeared
	pvCreated time.Time // a PV naming the claim appeared
	bound     time.Time // the claim's phase became Bound
	pvDeleted time.Time // that PV was gone
}

// tracker watches the claims of one namespace and the PVs that name them,
// and records when each claim reached each step. Its handlers only take
// the time and store it, so that a busy handler does not delay the events
// behind it.
type tracker struct {
	ns      string
	factory informers.SharedInformerFactory
	pvs     informers.SharedInformerFactory
	// cancel stops the informers: Shutdown only waits for them.
	cancel context.CancelFunc

	mu     sync.Mutex
	claims map[string]*claimTimes // by claim name
}

// newTracker starts watching claims of ns and all PVs, and returns once the
// informers have synced.
func newTracker(ctx context.Context, cs kubernetes.Interface, ns string) (*tracker, error) {
	ctx, cancel := context.WithCancel(ctx)
	t := &tracker{
		cancel:  cancel,
		ns:      ns,
		factory: informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns)),
		pvs:     informers.NewSharedInformerFactory(cs, 0),
		claims:  map[string]*claimTimes{},
	}
	claimHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.observeClaim(obj, time.Now()) },
		UpdateFunc: func(_, obj any) { t.observeClaim(obj, time.Now()) },
	}
	pvHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.observeVolume(obj, time.Now(), false) },
		UpdateFunc: func(_, obj any) { t.observeVolume(obj, time.Now(), false) },
		DeleteFunc: func(obj any) { t.observeVolume(obj, time.Now(), true) },
	}
	if _, err := t.factory.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(claimHandler); err != nil {
		return nil, err
	}
	if _, err := t.pvs.Core().V1().PersistentVolumes().Informer().AddEventHandler(pvHandler); err != nil {
		return nil, err
	}
	for _, f := range []informers.SharedInformerFactory{t.factory, t.pvs} {
		f.Start(ctx.Done())
	}
	for _, f := range []informers.SharedInformerFactory{t.factory, t.pvs} {
		if err := f.WaitForCacheSyncWithContext(ctx).AsError(); err != nil {
			t.stop()
			return nil, fmt.Errorf("watching claims and PVs: %w", err)
		}
	}
	return t, nil
}

// stop ends the watches and waits for the informers to return.
func (t *tracker) stop() {
	t.cancel()
	t.factory.Shutdown()
	t.pvs.Shutdown()
}

// times returns the entry of the claim, made on first sight.
func (t *tracker) times(name string, now time.Time) *claimTimes {
	ct := t.claims[name]
	if ct == nil {
		ct = &claimTimes{created: now}
		t.claims[name] = ct
	}
	return ct
}

// setOnce sets *at to now unless it is set.
func setOnce(at *time.Time, now time.Time) {
	if at.IsZero() {
		*at = now
	}
}

func (t *tracker) observeClaim(obj any, now time.Time) {
	claim, ok := obj.(*v1.PersistentVolumeClaim)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ct := t.times(claim.Name, now)
	if provisioner.SelectedNode(claim) != "" {
		setOnce(&ct.selected, now)
	}
	if claim.Annotations[annStorageProvisioner] != "" {
		setOnce(&ct.annotated, now)
	}
	if claim.Status.Phase == v1.ClaimBound {
		setOnce(&ct.bound, now)
	}
}

func (t *tracker) observeVolume(obj any, now time.Time, deleted bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pv, ok := obj.(*v1.PersistentVolume)
	if !ok || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Namespace != t.ns {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ct := t.times(pv.Spec.ClaimRef.Name, now)
	setOnce(&ct.pvCreated, now)
	if deleted {
		setOnce(&ct.pvDeleted, now)
	}
}

// snapshot copies what the tracker has recorded.
func (t *tracker) snapshot() map[string]claimTimes {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]claimTimes, len(t.claims))
	for name, ct := range t.claims {
		out[name] = *ct
	}
	return out
}

// progress counts the claims seen, Bound, with a PV, and whose PV is gone.
type progress struct{ claims, bound, volumes, volumesGone int }

func countProgress(claims map[string]claimTimes) progress {
	var p progress
	for _, ct := range claims {
		p.claims++
		if !ct.bound.IsZero() {
			p.bound++
		}
		if !ct.pvCreated.IsZero() {
			p.volumes++
		}
		if !ct.pvDeleted.IsZero() {
			p.volumesGone++
		}
	}
	return p
}

// latencies are the per-claim figures of one run, in milliseconds.
type latencies struct {
	// selectedToPV: the scheduler's selected-node -> the PV exists.
	selectedToPV []float64
	// selectedToAnnotation: selected-node -> kube-controller-manager's
	// storage-provisioner annotation, which the provisioning library
	// waits for and the instant provisioner does not.
	selectedToAnnotation []float64
	// createdToBound: the claim appeared -> the claim is Bound.
	createdToBound []float64
	// lastBound is when the last claim became Bound.
	lastBound time.Time
}

// claimLatencies computes the per-claim figures of the claims that got
// through every step.
func claimLatencies(claims map[string]claimTimes) latencies {
	var l latencies
	for _, ct := range claims {
		if !ct.selected.IsZero() && !ct.pvCreated.IsZero() {
			l.selectedToPV = append(l.selectedToPV, ms(ct.pvCreated.Sub(ct.selected)))
		}
		if !ct.selected.IsZero() && !ct.annotated.IsZero() {
			l.selectedToAnnotation = append(l.selectedToAnnotation, ms(ct.annotated.Sub(ct.selected)))
		}
		if !ct.bound.IsZero() {
			l.createdToBound = append(l.createdToBound, ms(ct.bound.Sub(ct.created)))
			if ct.bound.After(l.lastBound) {
				l.lastBound = ct.bound
			}
		}
	}
	return l
}

// lastVolumeGone is when the last PV of the claims went.
func lastVolumeGone(claims map[string]claimTimes) time.Time {
	var last time.Time
	for _, ct := range claims {
		if ct.pvDeleted.After(last) {
			last = ct.pvDeleted
		}
	}
	return last
}
