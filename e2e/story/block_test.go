//go:build e2e

package story

import (
	"bytes"
	"context"
	"crypto/rand"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// devicePath is where the block scenario's pods see their volume.
const devicePath = "/dev/data"

// asBlockDevice makes the StatefulSet's claims volumeMode: Block and gives
// its pods the volume as a device, to a root shell (the device node belongs
// to root, as on any node).
func asBlockDevice(sts *appsv1.StatefulSet) {
	sts.Spec.VolumeClaimTemplates[0].Spec.VolumeMode = ptr.To(v1.PersistentVolumeBlock)
	spec := &sts.Spec.Template.Spec
	spec.SecurityContext = &v1.PodSecurityContext{RunAsUser: ptr.To[int64](0)}
	c := &spec.Containers[0]
	c.Command = []string{"sh", "-c", "exec sleep 100000"}
	c.VolumeMounts = nil
	c.VolumeDevices = []v1.VolumeDevice{{Name: "data", DevicePath: devicePath}}
}

// TestBlockVolume: a claim with volumeMode: Block is a device in its pod (a
// sparse file on the node, attached to a loop device). A pod writes to the
// raw device; the pod is deleted, and its successor reads the same bytes
// back from the same device on the same node.
func TestBlockVolume(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	pod := e.createStatefulSet(ctx, statefulSet("blk", 1, asBlockDevice))[0]
	b := e.bindingOf(ctx, pod)
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.VolumeMode == nil || *pv.Spec.VolumeMode != v1.PersistentVolumeBlock ||
		pv.Spec.CSI.VolumeAttributes[driver.VolumeContextBackend] != driver.BackendBlock {
		t.Fatalf("PV %s: volume mode %v, backend %q; want Block and %q", b.pv, pv.Spec.VolumeMode,
			pv.Spec.CSI.VolumeAttributes[driver.VolumeContextBackend], driver.BackendBlock)
	}
	e.step("1MiB written to the raw device %s", devicePath)
	data := make([]byte, 1<<20)
	rand.Read(data)
	if out, err := e.Exec(ctx, e.ns, pod.Name, bytes.NewReader(data), "sh", "-c", "cat > "+devicePath+" && sync"); err != nil {
		t.Fatalf("writing the device: %v\n%s", err, out)
	}
	want := checksum(data)
	e.step("the pod is deleted; its successor reads the device")
	e.deletePod(ctx, pod)
	pod = e.podReady(ctx, pod.Name)
	if again := e.bindingOf(ctx, pod); again.pv != b.pv || again.node != b.node {
		t.Errorf("the new pod has %s, want %s", again, b)
	}
	got, err := e.Exec(ctx, e.ns, pod.Name, nil, "head", "-c", "1048576", devicePath)
	if err != nil {
		t.Fatal(err)
	}
	if checksum(got) != want {
		t.Errorf("the device holds other bytes after the pod was replaced")
	}
}

// TestInlineVolume: a pod with a CSI inline volume of the driver gets a
// volume of its own, made on its node when the pod starts and deleted with
// the pod; nothing of it is left on the node.
func TestInlineVolume(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	before := e.volumeDirs()
	e.createPod(ctx, "inline", "", func(p *v1.Pod) {
		p.Spec.Volumes = []v1.Volume{{Name: "data", VolumeSource: v1.VolumeSource{CSI: &v1.CSIVolumeSource{
			Driver: framework.DriverName, VolumeAttributes: map[string]string{"size": "16Mi"},
		}}}}
	})
	pod := e.podReady(ctx, "inline")
	sum := e.writeBlob(ctx, pod.Name)
	e.checkBlob(ctx, pod.Name, sum, "in the inline volume")
	made := newEntries(before, e.volumeDirs())
	if len(made) != 2 || !slices.ContainsFunc(made, func(p string) bool { return strings.HasPrefix(p, pod.Spec.NodeName+"/volumes/") }) {
		t.Errorf("on the nodes while the pod runs: %v new, want the volume and its record on %s", made, pod.Spec.NodeName)
	}
	e.step("the pod is deleted; its volume goes with it")
	e.deletePod(ctx, pod)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return len(newEntries(before, e.volumeDirs())) == 0, nil
	})
	if err != nil {
		t.Errorf("left on the nodes after the pod: %v", newEntries(before, e.volumeDirs()))
	}
}

// newEntries lists what is in now and not in before.
func newEntries(before, now map[string]bool) []string {
	var added []string
	for _, p := range slices.Sorted(maps.Keys(now)) {
		if !before[p] {
			added = append(added, p)
		}
	}
	return added
}
