//go:build e2e

package story

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestVolumeGrows: a running pod's claim is patched from 64Mi to 128Mi. The
// agent of its node grows the volume (on the local cluster's btrfs, its
// qgroup limit) with no sidecar and no restart of the pod: the claim and
// the PV say 128Mi, a write that hit the limit before now fits, and the data
// is intact. A request the node has no room for gets a Warning event and no
// change, until the request is lowered again.
func TestVolumeGrows(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)
	sts := statefulSet("grown", 1)
	sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[v1.ResourceStorage] = resource.MustParse("64Mi")
	pod := e.createStatefulSet(ctx, sts)[0]
	b := e.bindingOf(ctx, pod)
	sum := e.writeBlob(ctx, pod.Name)

	e.step("48Mi fit in the 64Mi volume, 32Mi more do not")
	e.fill(ctx, pod.Name, "first", 48, true)
	e.fill(ctx, pod.Name, "second", 32, false)

	e.step("the claim asks for 128Mi")
	e.request(ctx, b.claim, "128Mi")
	e.waitClaimCapacity(ctx, b.claim, "128Mi")
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pv.Spec.Capacity[v1.ResourceStorage]; got.Cmp(resource.MustParse("128Mi")) != 0 {
		t.Errorf("PV %s capacity %s after the claim grew, want 128Mi", b.pv, got.String())
	}
	if _, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", b.claim, func(ev *v1.Event) bool {
		return ev.Reason == "VolumeResizeSuccessful" && ev.Source.Host == b.node
	}); err != nil {
		t.Errorf("no VolumeResizeSuccessful event from %s's agent: %v", b.node, err)
	}
	now := e.podReady(ctx, pod.Name)
	if now.UID != pod.UID || now.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the pod was replaced or restarted while its volume grew: uid %s -> %s, restarts %d",
			pod.UID, now.UID, now.Status.ContainerStatuses[0].RestartCount)
	}
	e.step("online: the 32Mi that did not fit now do, and the data is intact")
	e.fill(ctx, pod.Name, "second", 32, true)
	e.checkBlob(ctx, pod.Name, sum, "after the volume grew")

	e.step("2Gi is more than the node has: refused with an event, nothing changes")
	e.request(ctx, b.claim, "2Gi")
	if _, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", b.claim, func(ev *v1.Event) bool {
		return ev.Type == v1.EventTypeWarning && ev.Reason == "VolumeResizeFailed" && strings.Contains(ev.Message, "not enough capacity")
	}); err != nil {
		t.Errorf("no VolumeResizeFailed event for a request the node has no room for: %v", err)
	}
	if pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{}); err != nil ||
		pv.Spec.Capacity.Storage().Cmp(resource.MustParse("128Mi")) != 0 {
		t.Errorf("PV after the refused growth: %v, %v; want 128Mi still", pv.Spec.Capacity.Storage(), err)
	}
	e.step("the request lowered to 256Mi: it grows to that")
	e.request(ctx, b.claim, "256Mi")
	e.waitClaimCapacity(ctx, b.claim, "256Mi")
}

// fill writes mib MiB to /data/<name> in the pod and fails the test unless
// the write succeeds (fits) or fails at the volume's size (!fits): "Disk
// quota exceeded" from a btrfs qgroup, "No space left on device" from an
// image volume's own file system. A refused file is removed.
func (e *env) fill(ctx context.Context, pod, name string, mib int, fits bool) {
	e.t.Helper()
	script := fmt.Sprintf("dd if=/dev/zero of=/data/%s bs=1M count=%d conv=fsync 2>&1", name, mib)
	out, err := e.Exec(ctx, e.ns, pod, nil, "sh", "-c", script)
	switch {
	case fits && err != nil:
		e.t.Fatalf("writing %d MiB: %v\n%s", mib, err, out)
	case !fits && (err == nil || !strings.Contains(string(out)+err.Error(), "quota exceeded") && !strings.Contains(string(out), "No space left")):
		e.t.Fatalf("writing %d MiB past the size: %v\n%s\nwant \"Disk quota exceeded\" or \"No space left on device\"", mib, err, out)
	case !fits:
		if _, err := e.Exec(ctx, e.ns, pod, nil, "rm", "/data/"+name); err != nil {
			e.t.Fatal(err)
		}
	}
}

// request sets the claim's storage request.
func (e *env) request(ctx context.Context, claim, size string) {
	e.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":%q}}}}`, size)
	if _, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Patch(ctx, claim, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatalf("claim %s to %s: %v", claim, size, err)
	}
}

// waitClaimCapacity waits until the claim's status says size and no resize
// is in progress.
func (e *env) waitClaimCapacity(ctx context.Context, claim, size string) {
	e.t.Helper()
	want := resource.MustParse(size)
	began := time.Now()
	_, err := framework.WaitForOne(ctx, e.Claim(e.ns, claim), &v1.PersistentVolumeClaim{}, func(c *v1.PersistentVolumeClaim) (bool, error) {
		got, ok := c.Status.Capacity[v1.ResourceStorage]
		return ok && got.Cmp(want) == 0 && len(c.Status.AllocatedResourceStatuses) == 0, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for claim %s to have %s: %v", claim, size, err)
	}
	e.step("claim %s has %s after %s", claim, size, time.Since(began).Round(100*time.Millisecond))
}
