//go:build e2e

package story

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickyvol/stickyvol/driver"
)

// TestSizeIsEnforced: on the local cluster each node's data root is a btrfs
// file system, so every volume is a subvolume whose qgroup limit is its size.
// A pod writes within its 32Mi claim and then past it: the first write
// succeeds, the second fails with "Disk quota exceeded" instead of filling
// the node's disk, and the PV says which backend holds it.
func TestSizeIsEnforced(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	pod := e.createStatefulSet(ctx, statefulSet("sized", 1))[0]
	b := e.bindingOf(ctx, pod)
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pv.Spec.CSI.VolumeAttributes[driver.VolumeContextBackend]; got != driver.BackendBtrfs {
		t.Fatalf("PV %s says backend %q, want %q on the local cluster's btrfs data roots", b.pv, got, driver.BackendBtrfs)
	}

	e.step("write 16Mi into the 32Mi volume")
	if out, err := e.Exec(ctx, e.ns, pod.Name, nil, "sh", "-c", "dd if=/dev/zero of=/data/within bs=1M count=16 conv=fsync 2>&1"); err != nil {
		t.Fatalf("writing within the size: %v\n%s", err, out)
	}
	e.step("write 32Mi more: refused at the limit")
	out, err := e.Exec(ctx, e.ns, pod.Name, nil, "sh", "-c", "dd if=/dev/zero of=/data/beyond bs=1M count=32 conv=fsync 2>&1")
	if err == nil || !strings.Contains(string(out)+err.Error(), "quota exceeded") {
		t.Fatalf("writing past the size: %v\n%s\nwant a failure with \"Disk quota exceeded\"", err, out)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out)))
	e.step("the data within the limit is intact, and the pod can free room")
	if out, err := e.Exec(ctx, e.ns, pod.Name, nil, "sh", "-c", "rm /data/beyond && wc -c < /data/within"); err != nil || strings.TrimSpace(string(out)) != "16777216" {
		t.Errorf("after the refusal: %v, %q; want /data/within of 16777216 bytes", err, out)
	}
}
