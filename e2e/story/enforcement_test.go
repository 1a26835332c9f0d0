//go:build e2e

package story

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/capacity"
	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestSizeEnforcementRequired: a class with sizeEnforcement: required gets
// volumes only where sizes hold. The real nodes' data roots are btrfs; the
// fake nodes' host agents keep theirs in plain host directories, so their
// volumes would be directories. Those agents publish no room for the class,
// so the scheduler keeps its pods off them; a claim put on such a node by
// hand (as a stale scheduler decision would) is refused with a Warning event
// that names the node and why, and goes back to the scheduler. The same
// class on a real node gets a btrfs volume.
func TestSizeEnforcementRequired(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)
	agents := e.hostAgents(ctx)
	strict := e.storageClass(ctx, "stickyvol-strict", map[string]string{driver.ParamSizeEnforcement: driver.SizeEnforcementRequired})
	for _, n := range e.Cluster.Nodes() {
		e.waitPublished(ctx, strict.Name, n.Name, -1)
	}
	fake := agents.Nodes()[0]
	e.step("%s, whose volumes would be directories, publishes no room for the class", fake)
	e.waitNoRoomPublished(ctx, strict.Name, fake)

	e.step("a StatefulSet of the class on the fake nodes: no node for its pod")
	e.createStatefulSetNoWait(ctx, statefulSet("strict-fake", 1, framework.OnFakeNodes, classNamed(strict.Name)))
	if _, err := e.WaitForEvent(ctx, e.ns, "Pod", "strict-fake-0", func(ev *v1.Event) bool {
		return ev.Reason == "FailedScheduling" && strings.Contains(ev.Message, "did not have enough free storage")
	}); err != nil {
		t.Errorf("no FailedScheduling for lack of storage on the fake nodes: %v", err)
	}

	e.step("a claim of the class put on %s by hand: refused with the reason, back to the scheduler", fake)
	c := claim("strict-by-hand", "1Mi", v1.ReadWriteOnce)
	c.Spec.StorageClassName = &strict.Name
	c.Annotations = map[string]string{"volume.kubernetes.io/selected-node": fake}
	e.createClaim(ctx, c)
	ev, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", c.Name, func(ev *v1.Event) bool {
		return ev.Type == v1.EventTypeWarning && ev.Reason == "ProvisioningFailed" &&
			strings.Contains(ev.Message, fake) && strings.Contains(ev.Message, "can only account volume sizes")
	})
	if err != nil {
		t.Fatalf("no ProvisioningFailed event naming %s and why: %v", fake, err)
	}
	t.Logf("refused: %s", ev.Message)
	if _, err := framework.WaitForOne(ctx, e.Claim(e.ns, c.Name), &v1.PersistentVolumeClaim{}, func(c *v1.PersistentVolumeClaim) (bool, error) {
		_, selected := c.Annotations["volume.kubernetes.io/selected-node"]
		return !selected && c.Spec.VolumeName == "", nil
	}); err != nil {
		t.Errorf("claim %s not sent back to the scheduler: %v", c.Name, err)
	}

	e.step("the class on a real node: a btrfs volume")
	pod := e.createStatefulSet(ctx, statefulSet("strict-real", 1, classNamed(strict.Name)))[0]
	b := e.bindingOf(ctx, pod)
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pv.Spec.CSI.VolumeAttributes[driver.VolumeContextBackend]; got != driver.BackendBtrfs {
		t.Errorf("PV %s of the strict class has backend %q, want %q", b.pv, got, driver.BackendBtrfs)
	}
}

// storageClass creates a StorageClass of the driver with the parameters
// (WaitForFirstConsumer, reclaim Delete, expansion allowed) for the test's
// length.
func (e *env) storageClass(ctx context.Context, name string, params map[string]string) *storagev1.StorageClass {
	e.t.Helper()
	class := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: name},
		Provisioner:          framework.DriverName,
		ReclaimPolicy:        ptr.To(v1.PersistentVolumeReclaimDelete),
		VolumeBindingMode:    ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		AllowVolumeExpansion: ptr.To(true),
		Parameters:           params,
	}
	if _, err := e.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = e.Client.StorageV1().StorageClasses().Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	})
	return class
}

// waitNoRoomPublished waits until node's CSIStorageCapacity object for the
// class says no room at all.
func (e *env) waitNoRoomPublished(ctx context.Context, class, node string) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := e.Client.StorageV1().CSIStorageCapacities(framework.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: capacity.LabelManagedBy + "=" + capacity.ManagedBy(node)})
		if err != nil {
			return false, err
		}
		for _, c := range list.Items {
			if c.StorageClassName == class {
				return c.Capacity != nil && c.Capacity.IsZero(), nil
			}
		}
		return false, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for %s to publish no room for class %s: %v", node, class, err)
	}
}
