package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/events"
)

// Defaults for ReconcilerConfig.
const (
	DefaultReconcilePeriod = 5 * time.Minute
	DefaultOrphanGrace     = 10 * time.Minute
)

// ReconcilerConfig configures NewReconciler.
type ReconcilerConfig struct {
	NodeName, DriverName, TopologyKey string
	// ControllerClient is the node's driver: ListVolumes and DeleteVolume.
	ControllerClient csi.ControllerClient
	Client           kubernetes.Interface
	// Informers is the cluster-wide factory the provisioner uses (claims
	// and PVs); the caller starts it.
	Informers informers.SharedInformerFactory
	// Period is how often volumes and PVs are compared; 0 means
	// DefaultReconcilePeriod.
	Period time.Duration
	// Grace is how long a volume must be without PV, or a PV without
	// volume, before it counts; 0 means DefaultOrphanGrace.
	Grace time.Duration
	// DeleteOrphansAfter, when positive, deletes a volume that has been
	// without PV and without claim for this long (at least Grace).
	DeleteOrphansAfter time.Duration
}

// Reconciler compares this node's volumes with the PVs that name this node,
// as no single provisioning step can: a volume is leaked when the agent
// stops between CreateVolume and saving the PV while the claim is deleted,
// or when a PV is deleted by hand with its finalizer; a PV's volume is gone
// when the data root was wiped or replaced.
//
//   - A volume that no PV names and that no claim is waiting for (the
//     provisioning library names volume and PV "pvc-<claim UID>", so a
//     Pending claim's volume is on its way to a PV) is an orphan once it has
//     been one for Grace: counted in stickyvol_orphan_volumes, logged, and
//     with DeleteOrphansAfter deleted through the driver (which refuses a
//     volume still mounted).
//   - A PV of this node whose volume the driver does not have gets one
//     Warning event VolumeMissing and counts in stickyvol_missing_volumes.
type Reconciler struct {
	cfg     ReconcilerConfig
	factory informers.SharedInformerFactory
	pvs     corelisters.PersistentVolumeLister
	claims  corelisters.PersistentVolumeClaimLister

	orphans, missing prometheus.Gauge
	deleted          prometheus.Counter

	mu sync.Mutex
	// suspects maps a volume ID without PV to when it was first seen so.
	suspects map[string]time.Time
	// reported holds the PVs whose missing volume has had its event.
	reported sets.Set[string]
	// last is what the last check found.
	last Findings
}

// Findings is what a Reconciler's last check found.
type Findings struct {
	// Checked is when the last check finished; zero before the first.
	Checked time.Time
	// Orphans are the volumes no PV names and no claim waits for, past the
	// grace period, by volume ID.
	Orphans []Orphan
	// Missing are the PVs of this node whose volume the driver does not
	// have, by PV name.
	Missing []MissingVolume
}

// Orphan is a volume that no PV names and no claim waits for.
type Orphan struct {
	VolumeID string
	// Since is when the volume was first seen without PV or claim.
	Since time.Time
}

// MissingVolume is a PV of this node whose volume the driver does not have.
type MissingVolume struct {
	PV, VolumeID string
	// Claim is the PV's claim; empty when the PV names none.
	Claim types.NamespacedName
}

// NewReconciler checks cfg and takes the listers it needs.
func NewReconciler(cfg ReconcilerConfig) (*Reconciler, error) {
	if cfg.NodeName == "" || cfg.DriverName == "" || cfg.TopologyKey == "" || cfg.ControllerClient == nil ||
		cfg.Client == nil || cfg.Informers == nil {
		return nil, errors.New("reconciler: node, driver, topology key, CSI client, API client and informers are required")
	}
	if cfg.Period <= 0 {
		cfg.Period = DefaultReconcilePeriod
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultOrphanGrace
	}
	if cfg.DeleteOrphansAfter > 0 && cfg.DeleteOrphansAfter < cfg.Grace {
		return nil, fmt.Errorf("reconciler: deleting orphans after %s would not wait for the grace period of %s",
			cfg.DeleteOrphansAfter, cfg.Grace)
	}
	return &Reconciler{
		cfg:     cfg,
		factory: cfg.Informers,
		pvs:     cfg.Informers.Core().V1().PersistentVolumes().Lister(),
		claims:  cfg.Informers.Core().V1().PersistentVolumeClaims().Lister(),
		orphans: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stickyvol_orphan_volumes",
			Help: "Volumes on this node that no PV names and no claim waits for, for longer than the grace period."}),
		missing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stickyvol_missing_volumes",
			Help: "PVs of this node whose volume the driver does not have."}),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "stickyvol_orphan_volumes_deleted_total",
			Help: "Orphan volumes deleted (--delete-orphans-after)."}),
		suspects: map[string]time.Time{},
		reported: sets.New[string](),
	}, nil
}

// Collectors returns the reconciler's metrics.
func (r *Reconciler) Collectors() []prometheus.Collector {
	return []prometheus.Collector{r.orphans, r.missing, r.deleted}
}

// Findings returns what the last check found, as a copy the caller may
// keep: it is safe to call while Run checks.
func (r *Reconciler) Findings() Findings {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.last
	f.Orphans, f.Missing = slices.Clone(f.Orphans), slices.Clone(f.Missing)
	return f
}

// Run checks at start and every Period until ctx is done.
func (r *Reconciler) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("reconcile")
	ctx = klog.NewContext(ctx, logger)
	if err := r.factory.WaitForCacheSyncWithContext(ctx).AsError(); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("reconciler: waiting for informers: %w", err)
	}
	recorder, stop := events.NewRecorder(ctx, r.cfg.Client, v1.EventSource{Component: r.cfg.DriverName, Host: r.cfg.NodeName})
	defer stop()
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.Check(ctx, recorder, time.Now()); err != nil {
			logger.Error(err, "Comparing volumes with PVs failed; next try in a period", "period", r.cfg.Period)
		}
	}, r.cfg.Period)
	return nil
}

// Check compares the driver's volumes with the PVs once, at now.
func (r *Reconciler) Check(ctx context.Context, recorder record.EventRecorder, now time.Time) error {
	logger := klog.FromContext(ctx)
	volumes, err := r.listVolumes(ctx)
	if err != nil {
		return err
	}
	all, err := r.pvs.List(labels.Everything())
	if err != nil {
		return err
	}
	named := sets.New[string]()
	var ours []*v1.PersistentVolume
	for _, pv := range all {
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.cfg.DriverName {
			continue
		}
		named.Insert(pv.Spec.CSI.VolumeHandle)
		if NodesOf(pv, r.cfg.TopologyKey).Has(r.cfg.NodeName) {
			ours = append(ours, pv)
		}
	}
	waitedFor, err := r.claimsInProgress()
	if err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	var orphans []Orphan
	for id := range volumes {
		if named.Has(id) || waitedFor.Has(id) {
			delete(r.suspects, id)
			continue
		}
		since, ok := r.suspects[id]
		if !ok {
			r.suspects[id] = now
			continue
		}
		age := now.Sub(since)
		if age < r.cfg.Grace {
			continue
		}
		if r.cfg.DeleteOrphansAfter > 0 && age >= r.cfg.DeleteOrphansAfter {
			if r.deleteOrphan(ctx, id, age) {
				continue
			}
		} else {
			logger.Info("Volume without PV or claim", "volumeID", id, "since", since.UTC().Format(time.RFC3339))
		}
		orphans = append(orphans, Orphan{VolumeID: id, Since: since})
	}
	slices.SortFunc(orphans, func(a, b Orphan) int { return strings.Compare(a.VolumeID, b.VolumeID) })
	for id := range r.suspects {
		if !volumes.Has(id) {
			delete(r.suspects, id)
		}
	}
	var missing []MissingVolume
	for _, pv := range ours {
		if volumes.Has(pv.Spec.CSI.VolumeHandle) || pv.DeletionTimestamp != nil || now.Sub(pv.CreationTimestamp.Time) < r.cfg.Grace {
			continue
		}
		m := MissingVolume{PV: pv.Name, VolumeID: pv.Spec.CSI.VolumeHandle}
		if ref := pv.Spec.ClaimRef; ref != nil {
			m.Claim = types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}
		}
		missing = append(missing, m)
		if !r.reported.Has(pv.Name) {
			r.reported.Insert(pv.Name)
			logger.Info("PV without its volume on this node", "pv", pv.Name, "volumeID", pv.Spec.CSI.VolumeHandle)
			recorder.Eventf(pv, v1.EventTypeWarning, "VolumeMissing",
				"The stickyvol driver on node %s has no volume %s: its data root was wiped or replaced, or the volume "+
					"was removed by hand. Pods using this PV cannot start; if the data is gone for good, delete the "+
					"claim (and the PV, if its reclaim policy is Retain)", r.cfg.NodeName, pv.Spec.CSI.VolumeHandle)
		}
	}
	slices.SortFunc(missing, func(a, b MissingVolume) int { return strings.Compare(a.PV, b.PV) })
	r.last = Findings{Checked: now, Orphans: orphans, Missing: missing}
	r.orphans.Set(float64(len(orphans)))
	r.missing.Set(float64(len(missing)))
	return nil
}

// deleteOrphan deletes an orphan through the driver and tells whether it
// is gone.
func (r *Reconciler) deleteOrphan(ctx context.Context, id string, age time.Duration) bool {
	logger := klog.FromContext(ctx)
	callCtx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	if _, err := r.cfg.ControllerClient.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		logger.Error(err, "Deleting an orphan volume failed", "volumeID", id)
		return false
	}
	delete(r.suspects, id)
	r.deleted.Inc()
	logger.Info("Deleted an orphan volume (--delete-orphans-after)", "volumeID", id, "orphanFor", age.Round(time.Second))
	return true
}

// claimsInProgress returns the volume IDs the library will give to the
// claims that exist and have no PV yet: "pvc-" and the claim's UID.
func (r *Reconciler) claimsInProgress() (sets.Set[string], error) {
	claims, err := r.claims.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	ids := sets.New[string]()
	for _, c := range claims {
		if c.DeletionTimestamp == nil && c.Spec.VolumeName == "" {
			ids.Insert("pvc-" + string(c.UID))
		}
	}
	return ids, nil
}

// listVolumes returns the IDs of the driver's volumes, all pages, but for
// inline ephemeral volumes: they have no PV by design, the driver deletes
// them when their pod's volume is unpublished, and sweeps those whose pod
// went away without that when it starts.
func (r *Reconciler) listVolumes(ctx context.Context) (sets.Set[string], error) {
	ids := sets.New[string]()
	token := ""
	for {
		resp, err := r.cfg.ControllerClient.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return nil, fmt.Errorf("listing the driver's volumes: %w", err)
		}
		for _, e := range resp.GetEntries() {
			if e.GetVolume().GetVolumeContext()[driver.VolumeContextEphemeral] == "true" {
				continue
			}
			ids.Insert(e.GetVolume().GetVolumeId())
		}
		if token = resp.GetNextToken(); token == "" {
			return ids, nil
		}
	}
}
