package deploy_test

import (
	"fmt"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

const demoImage = "stickyvol.local/demo:dev"

// examplePods checks what every example pod must do to run on a cluster with
// no registry and to go away promptly when deleted.
func examplePods(t *testing.T, where string, pod corev1.PodSpec) {
	t.Helper()
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds > 1 {
		t.Errorf("%s: terminationGracePeriodSeconds %v, want at most 1", where, show(pod.TerminationGracePeriodSeconds))
	}
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		if c.Image != demoImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("%s: container %s runs %s pull %s, want the locally made %s with IfNotPresent",
				where, c.Name, c.Image, c.ImagePullPolicy, demoImage)
		}
		if len(c.Command) == 3 && c.Command[0] == "/bin/sh" && c.Command[1] == "-c" {
			checkScript(t, where+": container "+c.Name, c.Command[2])
		}
	}
}

// checkScript parses a container's shell script with the host's sh and
// checks that its last command is exec'd: a shell as PID 1 ignores SIGTERM.
func checkScript(t *testing.T, where, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("%s: script does not parse: %v\n%s", where, err, out)
	}
	lines := strings.Split(strings.TrimSpace(script), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); !strings.HasPrefix(last, "exec ") {
		t.Errorf("%s: script ends with %q; exec the long-running command so it gets SIGTERM", where, last)
	}
}

func TestExampleStatefulSet(t *testing.T) {
	objs := decodeFile(t, "examples/web.yaml")
	sts := get[*appsv1.StatefulSet](t, objs, "web")
	svc := get[*corev1.Service](t, objs, sts.Spec.ServiceName)
	pod := sts.Spec.Template.Spec

	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s has clusterIP %q: pods get their own DNS names only from a headless Service", svc.Name, svc.Spec.ClusterIP)
	}
	for k, v := range svc.Spec.Selector {
		if sts.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the StatefulSet's pods", k, v)
		}
	}
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", show(sts.Spec.Replicas))
	}
	if sts.Spec.PodManagementPolicy != appsv1.OrderedReadyPodManagement {
		t.Errorf("podManagementPolicy %q, want OrderedReady: replicas copy from a primary that must be Ready", sts.Spec.PodManagementPolicy)
	}
	if r := sts.Spec.PersistentVolumeClaimRetentionPolicy; r == nil ||
		r.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType ||
		r.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Errorf("claim retention %v, want Retain: scaling down and up must keep the data", show(r))
	}
	examplePods(t, "StatefulSet web", pod)

	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("want one volumeClaimTemplate, got %d", len(sts.Spec.VolumeClaimTemplates))
	}
	vct := sts.Spec.VolumeClaimTemplates[0]
	if vct.Spec.StorageClassName == nil || *vct.Spec.StorageClassName != className ||
		!slices.Equal(vct.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) ||
		vct.Spec.Resources.Requests.Storage().String() != "64Mi" {
		t.Errorf("claim template %s: class %v, modes %v, size %v; want %s, [ReadWriteOnce], 64Mi", vct.Name,
			show(vct.Spec.StorageClassName), vct.Spec.AccessModes, vct.Spec.Resources.Requests.Storage(), className)
	}
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == vct.Name && m.MountPath == "/data" }) {
			t.Errorf("container %s does not mount claim %s at /data", c.Name, vct.Name)
		}
	}

	// Replicas reach the primary by its stable name <sts>-0.<service>.
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("want one init container (copy) and one container (serve)")
	}
	port := pod.Containers[0].Ports[0]
	primaryURL := fmt.Sprintf("http://%s-0.%s:%d/", sts.Name, svc.Name, port.ContainerPort)
	if script := strings.Join(pod.InitContainers[0].Command, " "); !strings.Contains(script, primaryURL) {
		t.Errorf("init container does not copy from %s:\n%s", primaryURL, script)
	}
	if svc.Spec.Ports[0].TargetPort.String() != port.Name {
		t.Errorf("Service targets port %s, the pods serve on %q", svc.Spec.Ports[0].TargetPort.String(), port.Name)
	}
	if p := pod.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != port.Name {
		t.Error("want a readiness probe on the served port: OrderedReady waits for it before the next pod")
	}
}

func TestExampleClaims(t *testing.T) {
	for _, tc := range []struct {
		file string
		mode corev1.PersistentVolumeAccessMode
		pods int
	}{
		{"refused-rwx.yaml", corev1.ReadWriteMany, 1},
		{"refused-rox.yaml", corev1.ReadOnlyMany, 1},
		{"rwop.yaml", corev1.ReadWriteOncePod, 2},
		{"retain.yaml", corev1.ReadWriteOnce, 1},
	} {
		t.Run(tc.file, func(t *testing.T) {
			objs := decodeFile(t, filepath.Join("examples/claims", tc.file))
			claims := all[*corev1.PersistentVolumeClaim](objs)
			if len(claims) != 1 {
				t.Fatalf("want one claim, got %d", len(claims))
			}
			claim := claims[0]
			if !slices.Equal(claim.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{tc.mode}) {
				t.Errorf("claim %s has access modes %v, want [%s]", claim.Name, claim.Spec.AccessModes, tc.mode)
			}
			classes := []string{className}
			for _, sc := range all[*storagev1.StorageClass](objs) {
				if sc.Provisioner != driverName {
					t.Errorf("StorageClass %s provisioner %q, want %q", sc.Name, sc.Provisioner, driverName)
				}
				classes = append(classes, sc.Name)
			}
			if claim.Spec.StorageClassName == nil || !slices.Contains(classes, *claim.Spec.StorageClassName) {
				t.Errorf("claim %s class %v, want one of %v", claim.Name, show(claim.Spec.StorageClassName), classes)
			}
			// With WaitForFirstConsumer nothing happens to a claim until a pod
			// that uses it is scheduled.
			pods := all[*corev1.Pod](objs)
			if len(pods) != tc.pods {
				t.Fatalf("want %d pods using the claim, got %d", tc.pods, len(pods))
			}
			for _, p := range pods {
				examplePods(t, "pod "+p.Name, p.Spec)
				if !slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool {
					return v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim.Name
				}) {
					t.Errorf("pod %s does not use claim %s", p.Name, claim.Name)
				}
			}
		})
	}
}

// TestExampleSnapshot: the snapshot example takes web-0's claim with the
// stickyvol class, and the restore names that snapshot, asks for at least
// web-0's size and runs its pod next to web-0, where the snapshot is.
func TestExampleSnapshot(t *testing.T) {
	web := decodeFile(t, "examples/web.yaml")
	sts := get[*appsv1.StatefulSet](t, web, "web")
	template := sts.Spec.VolumeClaimTemplates[0]
	snap := get[*snapv1.VolumeSnapshot](t, decodeFile(t, "examples/snapshots/snapshot.yaml"), "web-0-snap")
	if src := snap.Spec.Source.PersistentVolumeClaimName; src == nil || *src != template.Name+"-web-0" {
		t.Errorf("snapshot of claim %v, want %s-web-0", show(src), template.Name)
	}
	if c := snap.Spec.VolumeSnapshotClassName; c == nil || *c != className {
		t.Errorf("snapshot class %v, want %s (deploy/snapshots)", show(c), className)
	}
	objs := decodeFile(t, "examples/snapshots/restore.yaml")
	claim := get[*corev1.PersistentVolumeClaim](t, objs, "web-0-restored")
	if ds := claim.Spec.DataSource; ds == nil || ds.Kind != "VolumeSnapshot" || ds.Name != snap.Name ||
		ds.APIGroup == nil || *ds.APIGroup != snapv1.GroupName {
		t.Errorf("restore's dataSource %+v, want VolumeSnapshot %s", ds, snap.Name)
	}
	if got, want := claim.Spec.Resources.Requests.Storage(), template.Spec.Resources.Requests.Storage(); got.Cmp(*want) < 0 {
		t.Errorf("restore asks %s, less than the snapshot's %s", got, want)
	}
	pod := get[*corev1.Pod](t, objs, "web-0-restored")
	examplePods(t, "pod "+pod.Name, pod.Spec)
	a := pod.Spec.Affinity
	if a == nil || a.PodAffinity == nil || len(a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatal("the restore's pod must run next to web-0: a required pod affinity")
	}
	term := a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
	if term.TopologyKey != corev1.LabelHostname || term.LabelSelector.MatchLabels[appsv1.StatefulSetPodNameLabel] != "web-0" {
		t.Errorf("pod affinity %+v, want web-0's host", term)
	}
}

func TestEveryExampleFileIsTested(t *testing.T) {
	files, err := filepath.Glob("examples/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	top, _ := filepath.Glob("examples/*.yaml")
	tested := []string{"examples/web.yaml", "examples/claims/refused-rwx.yaml", "examples/claims/refused-rox.yaml",
		"examples/claims/rwop.yaml", "examples/claims/retain.yaml",
		"examples/snapshots/snapshot.yaml", "examples/snapshots/restore.yaml"}
	for _, f := range slices.Concat(top, files) {
		if !slices.Contains(tested, f) {
			t.Errorf("%s is not checked by any test here", f)
		}
	}
}
