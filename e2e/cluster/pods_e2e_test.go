//go:build e2e

package cluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/image"
)

// buildProbeImage builds internal/probe as a static binary and packs it into
// an image tarball.
func buildProbeImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "probe")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", bin, "./internal/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
	tarball := filepath.Join(dir, "probe.tar")
	_, err := image.WriteFile(tarball, image.Spec{
		Ref:        probeRef,
		Files:      []image.File{{Path: "/probe", Source: bin, Mode: 0o755}},
		Entrypoint: []string{"/probe"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tarball
}

// busyboxPod is a pod on node (any node when empty) that runs script with
// busybox's sh and is not restarted. A shell as PID 1 ignores SIGTERM, so
// the grace period is short.
func busyboxPod(name, node, script string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector:                  nodeSelector(node),
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers: []corev1.Container{{
				Name: "main", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/bin/sh", "-c", script},
			}},
		},
	}
}

// probePod runs the probe with args on node.
func probePod(name, node string, args ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector:                  nodeSelector(node),
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers: []corev1.Container{{
				Name: "main", Image: probeRef, ImagePullPolicy: corev1.PullIfNotPresent, Args: args,
			}},
		},
	}
}

func nodeSelector(node string) map[string]string {
	if node == "" {
		return nil
	}
	return map[string]string{corev1.LabelHostname: node}
}

// runToCompletion creates a pod that exits, waits for it to succeed and
// returns its log. It fails the test with the log when the pod fails.
func runToCompletion(ctx context.Context, t *testing.T, cs kubernetes.Interface, pod *corev1.Pod) string {
	t.Helper()
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	done := func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}
	p := waitPod(ctx, t, cs, pod.Name, done)
	logs, err := cs.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of %s: %v", pod.Name, err)
	}
	if p.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s on %s failed:\n%s", pod.Name, p.Spec.NodeName, logs)
	}
	return string(logs)
}

// waitPod waits up to two minutes for the named pod to satisfy cond.
func waitPod(ctx context.Context, t *testing.T, cs kubernetes.Interface, name string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := pollUntil(ctx, 2*time.Minute, func() (bool, error) {
		var err error
		p, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return cond(p), fmt.Errorf("pod %s is %s: %+v", name, p.Status.Phase, p.Status.ContainerStatuses)
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitNodeReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	err := pollUntil(ctx, time.Minute, func() (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return nodeReady(n), fmt.Errorf("node %s not Ready: %v", name, n.Status.Conditions)
	})
	if err != nil {
		t.Fatal(err)
	}
}
