//go:build e2e

package story

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickyvol/stickyvol/driver"
)

// TestImageVolumes: a class with volumeType: image gives each claim a file
// system of its own in an image file, loop-mounted by the agent in its
// container, so its size holds whatever the data root is. An ext4 volume
// refuses a write past its size with "No space left on device". An xfs
// volume grows while its pod runs: the agent grows the image, kubelet calls
// NodeExpandVolume, and the agent grows the mounted file system. ext4
// grows online too where the agent has CAP_SYS_RESOURCE; where it lacks it
// (this machine's sandbox drops it) it grows offline, when the pod is
// replaced and the volume is published again with no pod using it. Data
// survives all of it.
func TestImageVolumes(t *testing.T) {
	ctx, e := start(t, 6*time.Minute)
	ext4 := e.storageClass(ctx, "stickyvol-image", map[string]string{driver.ParamVolumeType: driver.VolumeTypeImage})
	xfs := e.storageClass(ctx, "stickyvol-image-xfs", map[string]string{
		driver.ParamVolumeType: driver.VolumeTypeImage, driver.ParamFsType: driver.FsXFS})
	for _, n := range e.Cluster.Nodes() {
		e.waitPublished(ctx, ext4.Name, n.Name, -1)
		e.waitPublished(ctx, xfs.Name, n.Name, -1)
	}

	e.step("ext4: a 32Mi image volume holds 16Mi, not 32Mi more")
	small := e.createStatefulSet(ctx, statefulSet("img-ext4", 1, classNamed(ext4.Name), requesting("32Mi")))[0]
	b := e.bindingOf(ctx, small)
	e.wantBackend(ctx, b, driver.BackendImage)
	sum := e.writeBlob(ctx, small.Name)
	e.fill(ctx, small.Name, "first", 16, true)
	e.fill(ctx, small.Name, "second", 32, false)

	e.step("xfs: 300Mi (its least size); 200Mi fit, 100Mi more do not")
	big := e.createStatefulSet(ctx, statefulSet("img-xfs", 1, classNamed(xfs.Name), requesting("300Mi")))[0]
	bx := e.bindingOf(ctx, big)
	e.wantBackend(ctx, bx, driver.BackendImage)
	e.fill(ctx, big.Name, "first", 200, true)
	e.fill(ctx, big.Name, "second", 100, false)
	e.step("xfs: the claim asks for 400Mi; it grows online")
	e.request(ctx, bx.claim, "400Mi")
	e.waitClaimCapacity(ctx, bx.claim, "400Mi")
	if now := e.podReady(ctx, big.Name); now.UID != big.UID || now.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the xfs volume's pod was replaced or restarted while it grew")
	}
	e.fill(ctx, big.Name, "second", 100, true)

	e.step("ext4: the claim asks for 96Mi; the image grows at once, the file system online or at the next publish")
	e.request(ctx, b.claim, "96Mi")
	e.waitPVCapacity(ctx, b.pv, "96Mi")
	e.deletePod(ctx, small)
	small = e.podReady(ctx, small.Name)
	e.waitClaimCapacity(ctx, b.claim, "96Mi")
	if again := e.bindingOf(ctx, small); again.pv != b.pv || again.node != b.node {
		t.Errorf("the replaced pod has %s, want the same PV %s on %s", again, b.pv, b.node)
	}
	e.fill(ctx, small.Name, "second", 32, true)
	e.checkBlob(ctx, small.Name, sum, "after the ext4 volume grew")
}

// requesting sets the size the StatefulSet's claims ask for.
func requesting(size string) func(*appsv1.StatefulSet) {
	return func(sts *appsv1.StatefulSet) {
		sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[v1.ResourceStorage] = resource.MustParse(size)
	}
}

// wantBackend fails the test unless the binding's PV says backend.
func (e *env) wantBackend(ctx context.Context, b binding, backend string) {
	e.t.Helper()
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if got := pv.Spec.CSI.VolumeAttributes[driver.VolumeContextBackend]; got != backend {
		e.t.Fatalf("PV %s says backend %q, want %q", b.pv, got, backend)
	}
}

// waitPVCapacity waits until the PV says size: the controller step of a
// growth is done.
func (e *env) waitPVCapacity(ctx context.Context, pv, size string) {
	e.t.Helper()
	want := resource.MustParse(size)
	for {
		got, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		if got.Spec.Capacity.Storage().Cmp(want) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("PV %s still has %s, want %s: %v", pv, got.Spec.Capacity.Storage(), size, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
