//go:build e2e

package story

import (
	"context"
	"sort"
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

const hostnameLabel = "kubernetes.io/hostname"

// appPodSpec is the pod the scenarios run: the example's image serving its
// volume at /data, as an unprivileged user that owns the volume through
// fsGroup (the CSIDriver's fsGroupPolicy File). It exits at once on SIGTERM.
func appPodSpec(claim string) v1.PodSpec {
	spec := v1.PodSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](1),
		SecurityContext: &v1.PodSecurityContext{
			RunAsNonRoot: ptr.To(true),
			RunAsUser:    ptr.To[int64](65532),
			RunAsGroup:   ptr.To[int64](65532),
			FSGroup:      ptr.To[int64](65532),
		},
		Containers: []v1.Container{{
			Name:            "app",
			Image:           framework.DemoImage,
			ImagePullPolicy: v1.PullIfNotPresent,
			Command:         []string{"/bin/stickyvol-demo", "serve", "--dir", "/data", "--addr", ":8080"},
			VolumeMounts:    []v1.VolumeMount{{Name: "data", MountPath: "/data"}},
		}},
	}
	if claim != "" {
		spec.Volumes = []v1.Volume{{Name: "data", VolumeSource: v1.VolumeSource{
			PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
		}}}
	}
	return spec
}

// statefulSet is a StatefulSet of appPodSpec pods with a volume claim
// template "data" (ReadWriteOnce, class stickyvol, 32Mi), so its claims are
// data-<name>-<ordinal>. Pods start in parallel to keep scenarios short; the
// example StatefulSet (TestOrderedCreation) shows the ordered start.
func statefulSet(name string, replicas int32, edits ...func(*appsv1.StatefulSet)) *appsv1.StatefulSet {
	podLabels := map[string]string{"app": name}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(replicas),
			ServiceName:         name,
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: podLabels},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec:       appPodSpec(""),
			},
			VolumeClaimTemplates: []v1.PersistentVolumeClaim{claim("data", "32Mi", v1.ReadWriteOnce)},
		},
	}
	for _, edit := range edits {
		edit(sts)
	}
	return sts
}

// onePerNode keeps two pods of the StatefulSet off the same node, so a
// two-replica StatefulSet has a pod, and a volume, on each node.
func onePerNode(sts *appsv1.StatefulSet) {
	sts.Spec.Template.Spec.Affinity = &v1.Affinity{PodAntiAffinity: &v1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []v1.PodAffinityTerm{{
			LabelSelector: sts.Spec.Selector,
			TopologyKey:   hostnameLabel,
		}},
	}}
}

// spread asks the scheduler to spread the pods over the nodes, as the
// example does.
func spread(sts *appsv1.StatefulSet) {
	sts.Spec.Template.Spec.TopologySpreadConstraints = []v1.TopologySpreadConstraint{{
		MaxSkew:           1,
		TopologyKey:       hostnameLabel,
		WhenUnsatisfiable: v1.ScheduleAnyway,
		LabelSelector:     sts.Spec.Selector,
	}}
}

// claim is a claim of class stickyvol.
func claim(name, size string, modes ...v1.PersistentVolumeAccessMode) v1.PersistentVolumeClaim {
	return v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      modes,
			StorageClassName: ptr.To(framework.StorageClass),
			Resources: v1.VolumeResourceRequirements{
				Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse(size)},
			},
		},
	}
}

// createStatefulSet creates the StatefulSet and waits until all its pods are
// Ready; it returns them by ordinal.
func (e *env) createStatefulSet(ctx context.Context, sts *appsv1.StatefulSet) []*v1.Pod {
	e.t.Helper()
	e.createStatefulSetNoWait(ctx, sts)
	return e.statefulSetReady(ctx, sts.Name)
}

// createStatefulSetNoWait creates the StatefulSet and does not wait for its
// pods.
func (e *env) createStatefulSetNoWait(ctx context.Context, sts *appsv1.StatefulSet) {
	e.t.Helper()
	if _, err := e.Client.AppsV1().StatefulSets(e.ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// statefulSetReady waits until the StatefulSet has all its replicas Ready and
// returns its pods by ordinal.
func (e *env) statefulSetReady(ctx context.Context, name string) []*v1.Pod {
	e.t.Helper()
	sts, err := e.WaitForStatefulSet(ctx, e.ns, name)
	if err != nil {
		e.t.Fatal(err)
	}
	sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	if err != nil {
		e.t.Fatal(err)
	}
	want := int(*sts.Spec.Replicas)
	// The StatefulSet's status may count a pod Ready a moment before the
	// pod list shows it, or still count a pod being deleted.
	pods, err := framework.WaitFor(ctx, e.Pods(e.ns, sel), &v1.Pod{}, func(pods []*v1.Pod) (bool, error) {
		ready := 0
		for _, p := range pods {
			if p.DeletionTimestamp == nil && framework.PodReady(p) {
				ready++
			}
		}
		return ready == want && len(pods) == want, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for the %d pods of StatefulSet %s: %v", want, name, err)
	}
	sort.Slice(pods, func(i, j int) bool { return ordinal(e.t, pods[i]) < ordinal(e.t, pods[j]) })
	return pods
}

// ordinal is the pod's index in its StatefulSet, from the label the
// StatefulSet controller sets.
func ordinal(t *testing.T, p *v1.Pod) int {
	t.Helper()
	n, err := strconv.Atoi(p.Labels[appsv1.PodIndexLabel])
	if err != nil {
		t.Fatalf("pod %s, label %s: %v", p.Name, appsv1.PodIndexLabel, err)
	}
	return n
}

// scale sets the StatefulSet's replicas, as `kubectl scale` does, and waits
// for them.
func (e *env) scale(ctx context.Context, name string, replicas int32) []*v1.Pod {
	e.t.Helper()
	s, err := e.Client.AppsV1().StatefulSets(e.ns).GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	s.Spec.Replicas = replicas
	if _, err := e.Client.AppsV1().StatefulSets(e.ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return e.statefulSetReady(ctx, name)
}

// createPod creates a pod that mounts the claim at /data.
func (e *env) createPod(ctx context.Context, name, claimName string, edits ...func(*v1.Pod)) {
	e.t.Helper()
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: appPodSpec(claimName)}
	for _, edit := range edits {
		edit(pod)
	}
	if _, err := e.Client.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// onNode pins a pod to a node through the scheduler (a node selector), so
// that the scheduler still records the node on the pod's claims.
func onNode(node string) func(*v1.Pod) {
	return func(p *v1.Pod) { p.Spec.NodeSelector = map[string]string{hostnameLabel: node} }
}

// createClaim creates a claim.
func (e *env) createClaim(ctx context.Context, c v1.PersistentVolumeClaim) {
	e.t.Helper()
	if _, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Create(ctx, &c, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}
