package resizer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/events"
)

// Defaults for Config.
const (
	// DefaultWorkers is the number of claims grown at once. Growing is one
	// ControllerExpandVolume (a record rewrite, a qgroup limit) and three
	// API writes; a node rarely has more than a few claims growing.
	DefaultWorkers = 2
	// DefaultTimeout bounds one ControllerExpandVolume call.
	DefaultTimeout = 30 * time.Second
	// DefaultRetryIntervalStart and DefaultRetryIntervalMax bound the
	// per-claim exponential backoff after a failure that may pass (the node
	// has no room yet, the volume is busy), as the provisioner's do.
	DefaultRetryIntervalStart = time.Second
	DefaultRetryIntervalMax   = 5 * time.Minute
)

// Config configures New.
type Config struct {
	// NodeName is this node: only claims bound to PVs whose node affinity
	// names it through TopologyKey, and selected to it, are grown.
	NodeName, DriverName, TopologyKey string
	// ControllerClient is this node's driver.
	ControllerClient csi.ControllerClient
	Client           kubernetes.Interface
	// Informers is the agent's cluster-wide factory (claims, PVs, classes).
	// Run starts it if nobody has.
	Informers informers.SharedInformerFactory
	// Timeout bounds one ControllerExpandVolume; zero means DefaultTimeout.
	Timeout time.Duration
	// Workers is how many claims are grown at once; zero means
	// DefaultWorkers.
	Workers int
	// RetryIntervalStart and RetryIntervalMax bound the backoff of a claim
	// whose growth failed; zero means the defaults.
	RetryIntervalStart, RetryIntervalMax time.Duration
}

// Resizer grows this node's volumes whose claims ask for more; see the
// package documentation.
type Resizer struct {
	cfg     Config
	claims  corelisters.PersistentVolumeClaimLister
	pvs     corelisters.PersistentVolumeLister
	classes storagelisters.StorageClassLister
	synced  []cache.InformerSynced
	queue   workqueue.TypedRateLimitingInterface[cache.ObjectName]
	// recorder is set by Run before the workers start.
	recorder record.EventRecorder

	mu sync.Mutex
	// settled holds the claims whose last ControllerExpandVolume the driver
	// refused outright, so that nothing of it can still be under way and
	// the next try may ask for a smaller size than the one recorded in
	// allocatedResources. In memory only: after a restart the recorded size
	// is asked for once more, which is always safe.
	settled sets.Set[types.UID]
}

// New checks cfg and registers the claim handlers on the informers; nothing
// runs until Run.
func New(cfg Config) (*Resizer, error) {
	if cfg.NodeName == "" || cfg.DriverName == "" || cfg.TopologyKey == "" || cfg.ControllerClient == nil ||
		cfg.Client == nil || cfg.Informers == nil {
		return nil, errors.New("resizer: node, driver, topology key, CSI client, API client and informers are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.RetryIntervalStart <= 0 {
		cfg.RetryIntervalStart = DefaultRetryIntervalStart
	}
	if cfg.RetryIntervalMax <= 0 {
		cfg.RetryIntervalMax = DefaultRetryIntervalMax
	}
	claims := cfg.Informers.Core().V1().PersistentVolumeClaims()
	pvs := cfg.Informers.Core().V1().PersistentVolumes()
	classes := cfg.Informers.Storage().V1().StorageClasses()
	r := &Resizer{
		cfg:     cfg,
		claims:  claims.Lister(),
		pvs:     pvs.Lister(),
		classes: classes.Lister(),
		synced:  []cache.InformerSynced{claims.Informer().HasSynced, pvs.Informer().HasSynced, classes.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](cfg.RetryIntervalStart, cfg.RetryIntervalMax),
			workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "resizer"}),
		settled: sets.New[types.UID](),
	}
	_, err := claims.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if claim, ok := obj.(*v1.PersistentVolumeClaim); ok && mayGrow(claim) {
				r.enqueue(claim)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			old, ok1 := oldObj.(*v1.PersistentVolumeClaim)
			claim, ok2 := newObj.(*v1.PersistentVolumeClaim)
			if ok1 && ok2 && mayGrow(claim) && changedForResizer(old, claim) {
				r.enqueue(claim)
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if claim, ok := obj.(*v1.PersistentVolumeClaim); ok {
				r.queue.Forget(cache.MetaObjectToName(claim))
				r.setSettled(claim.UID, false)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("resizer: %w", err)
	}
	// A claim whose event came before its PV's is looked at again when the
	// PV arrives.
	_, err = pvs.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			pv, ok := obj.(*v1.PersistentVolume)
			if !ok || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != cfg.DriverName || pv.Spec.ClaimRef == nil {
				return
			}
			if claim, err := r.claims.PersistentVolumeClaims(pv.Spec.ClaimRef.Namespace).Get(pv.Spec.ClaimRef.Name); err == nil && mayGrow(claim) {
				r.enqueue(claim)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("resizer: %w", err)
	}
	return r, nil
}

// mayGrow is the cheap test every claim event passes through: a bound claim
// that asks for more than it has, or whose resize is under way.
func mayGrow(claim *v1.PersistentVolumeClaim) bool {
	if claim.Spec.VolumeName == "" {
		return false
	}
	want, have := claim.Spec.Resources.Requests[v1.ResourceStorage], claim.Status.Capacity[v1.ResourceStorage]
	return want.Cmp(have) > 0 || claim.Status.AllocatedResourceStatuses[v1.ResourceStorage] != ""
}

// changedForResizer reports whether an update may call for work: a resync
// (nothing changed), a new request, a new binding or selected node. The
// resizer's own status writes are not: it goes on from them in the same
// sync, and requeueing on them would bypass a failed claim's backoff.
func changedForResizer(old, claim *v1.PersistentVolumeClaim) bool {
	oldWant, want := old.Spec.Resources.Requests[v1.ResourceStorage], claim.Spec.Resources.Requests[v1.ResourceStorage]
	resync := old.ResourceVersion == claim.ResourceVersion && equality.Semantic.DeepEqual(old.Status, claim.Status)
	return resync || oldWant.Cmp(want) != 0 ||
		old.Status.Phase != claim.Status.Phase || old.Spec.VolumeName != claim.Spec.VolumeName ||
		old.Annotations[annSelectedNode] != claim.Annotations[annSelectedNode]
}

func (r *Resizer) enqueue(claim *v1.PersistentVolumeClaim) {
	r.queue.Add(cache.MetaObjectToName(claim))
}

// Run waits for the informers, then grows claims until ctx is done and the
// calls in flight have returned, so that the caller may stop the driver.
func (r *Resizer) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("resizer")
	ctx = klog.NewContext(ctx, logger)
	defer r.queue.ShutDown()
	r.cfg.Informers.StartWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), r.synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("resizer: the informers did not sync")
	}
	recorder, stop := events.NewRecorder(ctx, r.cfg.Client, v1.EventSource{Component: r.cfg.DriverName, Host: r.cfg.NodeName})
	defer stop()
	r.recorder = recorder
	logger.V(2).Info("Resizer running", "node", r.cfg.NodeName)
	var workers sync.WaitGroup
	for range r.cfg.Workers {
		workers.Go(func() {
			for r.next(ctx) {
			}
		})
	}
	<-ctx.Done()
	r.queue.ShutDown()
	workers.Wait()
	return nil
}

// next takes one claim off the queue and works on it; false once the queue
// is shut down.
func (r *Resizer) next(ctx context.Context) bool {
	name, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(name)
	if err := r.sync(ctx, name); err != nil {
		if ctx.Err() == nil {
			klog.FromContext(ctx).Error(err, "Growing the claim's volume failed; trying again with backoff",
				"pvc", klog.KRef(name.Namespace, name.Name), "failures", r.queue.NumRequeues(name)+1)
		}
		r.queue.AddRateLimited(name)
		return true
	}
	r.queue.Forget(name)
	return true
}

func (r *Resizer) isSettled(uid types.UID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.settled.Has(uid)
}

func (r *Resizer) setSettled(uid types.UID, settled bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if settled {
		r.settled.Insert(uid)
	} else {
		r.settled.Delete(uid)
	}
}
