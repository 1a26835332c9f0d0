package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
	"github.com/stickyvol/stickyvol/provisioner"
)

// The memory scenario fills the cluster with bound claims and PVs of
// stickyvol on nodes that have no agent here, as the volumes of a large
// cluster's other nodes are to one agent, and reads the agents' RSS.
const (
	// memoryLabel marks the scenario's PVs (its claims have a namespace).
	memoryLabel = "bench.stickyvol.dev/scenario"
	// otherNodes is how many distinct other nodes the objects name.
	otherNodes = 100
	// createWorkers is how many objects the bench creates at once.
	createWorkers = 16
)

// runMemory measures the agents' RSS idle, with objects claims and PVs of
// other nodes created while they run, and after a restart with those
// there. At the end it starts deleting the objects and does not wait: that
// takes kube-controller-manager minutes, and the scenario runs last.
func runMemory(ctx context.Context, cs kubernetes.Interface, sv *stickyvolContender, objects int, logf framework.Logf) (m *Memory, err error) {
	m = &Memory{Objects: objects, Quiet: true}
	procs, err := sv.start(ctx)
	defer func() {
		if serr := sv.stop(context.WithoutCancel(ctx)); serr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the agents: %w", serr))
		}
	}()
	if err != nil {
		return nil, err
	}
	m.Agents = len(procs)
	read := func(what string, timeout time.Duration) (float64, error) {
		quiet, err := procs.waitQuiet(ctx, timeout)
		if err != nil {
			return 0, err
		}
		m.Quiet = m.Quiet && quiet
		rss, err := procs.rss(false)
		if err != nil {
			return 0, err
		}
		median := Median(slices.Collect(maps.Values(rss)))
		logf("memory: agent RSS %s: %.1f MiB (median of %d; quiet: %v)", what, median, len(rss), quiet)
		return median, nil
	}
	if m.IdleRSSMiB, err = read("idle", time.Minute); err != nil {
		return m, err
	}

	ns, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-memory-"}}, metav1.CreateOptions{})
	if err != nil {
		return m, err
	}
	defer func() {
		// Started, not waited for: kube-controller-manager takes minutes
		// to lift the protection finalizers of thousands of objects. A
		// failure here is reported and does not fail the run, whose
		// figures are taken: one DeleteCollection of 10,000 PVs can
		// outlast the API server's request timeout (seen as a stream
		// error), and a cluster the bench brought up goes down next anyway.
		bg := context.WithoutCancel(ctx)
		if cerr := errors.Join(
			cs.CoreV1().Namespaces().Delete(bg, ns.Name, metav1.DeleteOptions{}),
			cs.CoreV1().PersistentVolumes().DeleteCollection(bg, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: memoryLabel + "=memory"}),
		); cerr != nil {
			logf("memory: cleaning up the objects (delete them by label %s=memory on a cluster you keep): %v", memoryLabel, cerr)
		}
	}()
	began := time.Now()
	if err := createObjects(ctx, cs, ns.Name, objects); err != nil {
		return m, err
	}
	m.SetupSeconds = time.Since(began).Seconds()
	logf("memory: %d claims and %d PVs of other nodes created in %.0fs", objects, objects, m.SetupSeconds)
	if m.WatchedRSSMiB, err = read("with them watched in", 5*time.Minute); err != nil {
		return m, err
	}
	if procs, err = sv.restart(ctx); err != nil {
		return m, err
	}
	if m.RestartedRSSMiB, err = read("after a restart with them", 5*time.Minute); err != nil {
		return m, err
	}
	return m, nil
}

// restart kills every agent and starts it again, and returns the new
// processes.
func (s *stickyvolContender) restart(ctx context.Context) (processes, error) {
	ps := processes{}
	for _, node := range s.agents.Nodes() {
		if err := s.agents.Kill(node); err != nil {
			return nil, err
		}
		if err := s.agents.Start(ctx, node); err != nil {
			return nil, err
		}
		ps[node], _ = s.agents.Running(node)
	}
	return ps, nil
}

// createObjects creates n claims in ns and n PVs, each pair bound as the
// PV controller leaves a claim that stickyvol provisioned: the claim names
// its PV and carries the bind-completed annotation, the PV's claimRef has
// the claim's UID, both are Bound. The bench writes that state itself, at
// its own rate, rather than wait minutes for kube-controller-manager to
// bind 10,000 pairs at its client QPS; should the PV controller look at a
// claim before its PV reached its cache, it marks the claim Lost and binds
// it again once it sees the PV, whose claimRef UID matches.
func createObjects(ctx context.Context, cs kubernetes.Interface, ns string, n int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range createWorkers {
		wg.Go(func() {
			for i := range next {
				if err := createPair(ctx, cs, ns, i); err != nil {
					cancel(fmt.Errorf("object %d: %w", i, err))
					return
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

var oneMi = resource.MustParse("1Mi")

// createPair creates claim i and its PV, and marks both Bound.
func createPair(ctx context.Context, cs kubernetes.Interface, ns string, i int) error {
	node := fmt.Sprintf("bench-elsewhere-%03d", i%otherNodes)
	pvName := fmt.Sprintf("pvc-bench-memory-%05d", i)
	claim, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, otherClaim(fmt.Sprintf("data-other-%05d", i), node, pvName), metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, otherVolume(pvName, node, claim), metav1.CreateOptions{}); err != nil {
		return err
	}
	// Merge patches with no resourceVersion: they cannot conflict with
	// the PV controller's own writes of the same state.
	bound := []byte(`{"status":{"phase":"Bound"}}`)
	if _, err := cs.CoreV1().PersistentVolumes().Patch(ctx, pvName, types.MergePatchType, bound, metav1.PatchOptions{}, "status"); err != nil {
		return err
	}
	claims := cs.CoreV1().PersistentVolumeClaims(ns)
	completed := []byte(`{"metadata":{"annotations":{"pv.kubernetes.io/bind-completed":"yes"}}}`)
	if _, err := claims.Patch(ctx, claim.Name, types.MergePatchType, completed, metav1.PatchOptions{}); err != nil {
		return err
	}
	status := []byte(`{"status":{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{"storage":"1Mi"}}}`)
	_, err = claims.Patch(ctx, claim.Name, types.MergePatchType, status, metav1.PatchOptions{}, "status")
	return err
}

// otherClaim is a claim of class stickyvol that was selected to node and
// names its PV, as stickyvol's claims look once provisioned.
func otherClaim(name, node, pv string) *v1.PersistentVolumeClaim {
	return &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
			provisioner.AnnSelectedNode: node,
			annStorageProvisioner:       framework.DriverName,
		}},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			StorageClassName: ptr.To(framework.StorageClass),
			Resources:        v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: oneMi}},
			VolumeName:       pv,
			VolumeMode:       ptr.To(v1.PersistentVolumeFilesystem),
		},
	}
}

// otherVolume is a stickyvol PV on node bound to claim. Its reclaim policy
// is Retain, so that no agent and no controller acts when the scenario's
// claims are deleted.
func otherVolume(name, node string, claim *v1.PersistentVolumeClaim) *v1.PersistentVolume {
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{memoryLabel: "memory"},
			Annotations: map[string]string{annProvisionedBy: framework.DriverName},
		},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: oneMi},
			AccessModes:                   []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimRetain,
			StorageClassName:              framework.StorageClass,
			VolumeMode:                    ptr.To(v1.PersistentVolumeFilesystem),
			ClaimRef: &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: framework.DriverName, VolumeHandle: name,
			}},
			NodeAffinity: nodeAffinity(framework.TopologyKey, node),
		},
	}
}
