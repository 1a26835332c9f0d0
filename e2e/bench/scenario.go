package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// statefulSetName is the StatefulSet of every run; each run has a
// namespace of its own.
const statefulSetName = "bench"

// scenarioTimeout bounds each wait of a run with n claims: generous, as
// the issue measured 68 s for 1000 claims with the instant provisioner and
// 104 s with stickyvol on this kind of machine.
func scenarioTimeout(n int) time.Duration {
	return 2*time.Minute + time.Duration(n)*400*time.Millisecond
}

// benchStatefulSet is a Parallel StatefulSet of n pods on the fake nodes,
// each with a 1Mi ReadWriteOnce claim of class.
func benchStatefulSet(n int, class string) *appsv1.StatefulSet {
	labels := map[string]string{"app": statefulSetName}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: statefulSetName},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(int32(n)),
			ServiceName:         statefulSetName,
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: v1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](0),
					// kwok runs nothing: the image is never pulled.
					Containers: []v1.Container{{Name: "app", Image: framework.DemoImage,
						VolumeMounts: []v1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
				},
			},
			VolumeClaimTemplates: []v1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: v1.PersistentVolumeClaimSpec{
					AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
					StorageClassName: ptr.To(class),
					Resources: v1.VolumeResourceRequirements{
						Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Mi")},
					},
				},
			}},
		},
	}
	framework.OnFakeNodes(sts)
	return sts
}

// runScenario runs the StatefulSet scenario once with n claims: start the
// contender, create the StatefulSet, wait for every claim to be Bound,
// delete the StatefulSet and its claims, wait for every PV (and volume
// directory) to go, stop the contender.
func runScenario(ctx context.Context, cs kubernetes.Interface, ct contender, n, run int, logf framework.Logf) (res Pass, err error) {
	res = Pass{Provisioner: ct.name(), Claims: n, Run: run}
	procs, err := ct.start(ctx)
	defer func() {
		if serr := ct.stop(context.WithoutCancel(ctx)); serr != nil {
			err = errors.Join(err, fmt.Errorf("stopping %s: %w", ct.name(), serr))
		}
	}()
	if err != nil {
		return res, err
	}
	// Informers synced and idle: the run measures provisioning, not start.
	if _, err := procs.waitQuiet(ctx, time.Minute); err != nil {
		return res, err
	}
	if sv, ok := ct.(*stickyvolContender); ok && sv.profileDir != "" {
		wait := startProfile(ctx, sv.profileDir)
		sv.profileDir = ""
		defer func() {
			if perr := wait(); perr != nil {
				logf("no profile: %v", perr)
			}
		}()
	}
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: fmt.Sprintf("bench-%s-%d-", ct.name(), n),
	}}, metav1.CreateOptions{})
	if err != nil {
		return res, err
	}
	defer func() {
		// Empty by then; not waited for.
		if derr := cs.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), ns.Name, metav1.DeleteOptions{}); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	tr, err := newTracker(ctx, cs, ns.Name)
	if err != nil {
		return res, err
	}
	defer tr.stop()

	cpuStart, err := procs.totalCPU()
	if err != nil {
		return res, err
	}
	created := time.Now()
	if _, err := cs.AppsV1().StatefulSets(ns.Name).Create(ctx, benchStatefulSet(n, ct.storageClass()), metav1.CreateOptions{}); err != nil {
		return res, err
	}
	if err := waitProgress(ctx, tr, n, "claims Bound", func(p progress) bool { return p.claims == n && p.bound == n }); err != nil {
		return res, fmt.Errorf("%s, %d claims: %w\n%s", ct.name(), n, err, ct.logTail())
	}
	cpuBound, err := procs.totalCPU()
	if err != nil {
		return res, err
	}
	if res.PeakRSSMiB, err = procs.rss(true); err != nil {
		return res, err
	}
	lat := claimLatencies(tr.snapshot())
	res.AllBoundSeconds = lat.lastBound.Sub(created).Seconds()
	res.SelectedToPV, res.SelectedToPVSamples = Summarize(lat.selectedToPV), lat.selectedToPV
	res.SelectedToAnnotation = Summarize(lat.selectedToAnnotation)
	res.CreatedToBound = Summarize(lat.createdToBound)
	res.CPUPerClaimMs = ms(cpuBound-cpuStart) / float64(n)
	logf("%s N=%d run %d: all Bound in %.1fs, selected-node -> PV p50 %.0f ms p99 %.0f ms",
		ct.name(), n, run, res.AllBoundSeconds, res.SelectedToPV.P50, res.SelectedToPV.P99)

	deleted, err := deleteAll(ctx, cs, ns.Name, tr, n, ct)
	if err != nil {
		return res, fmt.Errorf("%s, %d claims: %w\n%s", ct.name(), n, err, ct.logTail())
	}
	cpuDone, err := procs.totalCPU()
	if err != nil {
		return res, err
	}
	res.DeletionSeconds = deleted.Seconds()
	res.DeleteCPUPerClaimMs = ms(cpuDone-cpuBound) / float64(n)
	logf("%s N=%d run %d: deleted in %.1fs", ct.name(), n, run, res.DeletionSeconds)
	return res, nil
}

// waitProgress polls the tracker until done holds. The figures come from
// the tracker's event times, so the polling interval does not enter them.
func waitProgress(ctx context.Context, tr *tracker, n int, what string, done func(progress) bool) error {
	var last progress
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, scenarioTimeout(n), true, func(context.Context) (bool, error) {
		last = countProgress(tr.snapshot())
		return done(last), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w (claims %d, Bound %d, PVs made %d, PVs gone %d)",
			what, err, last.claims, last.bound, last.volumes, last.volumesGone)
	}
	return nil
}

// deleteAll deletes the StatefulSet and its claims and returns the time
// until the last of their PVs is gone and nothing of them is left on disk.
func deleteAll(ctx context.Context, cs kubernetes.Interface, ns string, tr *tracker, n int, ct contender) (time.Duration, error) {
	began := time.Now()
	if err := cs.AppsV1().StatefulSets(ns).Delete(ctx, statefulSetName, metav1.DeleteOptions{}); err != nil {
		return 0, err
	}
	if err := cs.CoreV1().PersistentVolumeClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return 0, err
	}
	if err := waitProgress(ctx, tr, n, "PVs gone", func(p progress) bool { return p.volumes == n && p.volumesGone == n }); err != nil {
		return 0, err
	}
	end := lastVolumeGone(tr.snapshot())
	// stickyvol removes a volume before its PV; should one outlive its PV,
	// the deletion lasts until it is gone too.
	var left []string
	sawLeft := false
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var err error
		if left, err = ct.leftovers(); err != nil || len(left) > 0 {
			sawLeft = true
			return false, err
		}
		if sawLeft {
			end = time.Now()
		}
		return true, nil
	})
	if err != nil {
		return 0, fmt.Errorf("volumes left after their PVs were deleted: %s: %w", strings.Join(left, ", "), err)
	}
	return end.Sub(began), nil
}
