//go:build e2e

package story

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestReclaimPolicy: deleting a claim of the class stickyvol (reclaim
// policy Delete) removes its PV and its directory on the node; deleting a
// claim of the example class stickyvol-retain (Retain) leaves the PV Released
// and the directory, with the data, on the node.
func TestReclaimPolicy(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)

	e.step("class stickyvol (Delete)")
	e.createClaim(ctx, claim("scratch", "16Mi", v1.ReadWriteOnce))
	e.createPod(ctx, "scratch", "scratch")
	b := e.bindingOf(ctx, e.podReady(ctx, "scratch"))
	e.checkHostBlob(b, e.writeBlob(ctx, b.pod))
	e.deleteClaimAndPod(ctx, b)
	e.waitVolume(ctx, b.pv, func(pv *v1.PersistentVolume) bool { return pv == nil }, "deleted")
	for _, path := range e.hostPaths(b) {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s is still on node %s after its claim was deleted (stat: %v)", path, b.node, err)
		}
	}

	const file = "deploy/examples/claims/retain.yaml"
	e.step("class stickyvol-retain (Retain), %s", file)
	if _, err := e.ApplyFile(ctx, e.ns, file); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := e.Client.StorageV1().StorageClasses().Delete(context.WithoutCancel(ctx), "stickyvol-retain", metav1.DeleteOptions{})
		if err != nil {
			t.Errorf("deleting the StorageClass of %s: %v", file, err)
		}
	})
	b = e.bindingOf(ctx, e.podReady(ctx, "kept"))
	sum := e.writeBlob(ctx, b.pod)
	e.deleteClaimAndPod(ctx, b)
	e.waitVolume(ctx, b.pv, func(pv *v1.PersistentVolume) bool {
		return pv != nil && pv.Status.Phase == v1.VolumeReleased
	}, "Released")
	e.checkHostBlob(b, sum)
	t.Logf("%s: claim deleted, PV Released, directory kept with the data", b)

	e.step("switch the Released PV to Delete: the volume goes")
	patch := []byte(`{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`)
	if _, err := e.Client.CoreV1().PersistentVolumes().Patch(ctx, b.pv, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitVolume(ctx, b.pv, func(pv *v1.PersistentVolume) bool { return pv == nil }, "deleted")
	if _, err := os.Stat(e.volumeDir(b)); !os.IsNotExist(err) {
		t.Errorf("%s is still on node %s after its PV was deleted (stat: %v)", e.volumeDir(b), b.node, err)
	}
}

// hostPaths are the volume's directory and record on its node's host.
func (e *env) hostPaths(b binding) []string {
	return []string{e.volumeDir(b), filepath.Join(e.node(b.node).DataDir, "meta", b.handle+".json")}
}

// deleteClaimAndPod deletes the pod, then its claim, and waits for the
// claim to be gone.
func (e *env) deleteClaimAndPod(ctx context.Context, b binding) {
	e.t.Helper()
	pod, err := e.Client.CoreV1().Pods(e.ns).Get(ctx, b.pod, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.deletePod(ctx, pod)
	if err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Delete(ctx, b.claim, metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
	_, err = framework.WaitForOne(ctx, e.Claim(e.ns, b.claim), &v1.PersistentVolumeClaim{},
		func(c *v1.PersistentVolumeClaim) (bool, error) { return c == nil, nil })
	if err != nil {
		e.t.Fatalf("waiting for claim %s to go: %v", b.claim, err)
	}
}

// waitVolume waits until cond holds for the PV (nil once it is gone).
func (e *env) waitVolume(ctx context.Context, name string, cond func(*v1.PersistentVolume) bool, what string) {
	e.t.Helper()
	_, err := framework.WaitForOne(ctx, e.Volume(name), &v1.PersistentVolume{},
		func(pv *v1.PersistentVolume) (bool, error) { return cond(pv), nil })
	if err != nil {
		e.t.Fatalf("waiting for PV %s to be %s: %v", name, what, err)
	}
}
