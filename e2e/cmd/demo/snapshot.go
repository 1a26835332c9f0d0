package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// The snapshot part of the story, from deploy/examples/snapshots/.
const (
	snapshotFile = "deploy/examples/snapshots/snapshot.yaml"
	restoreFile  = "deploy/examples/snapshots/restore.yaml"
	snapshotName = "web-0-snap"
	restoredName = "web-0-restored" // the restore's claim and pod
	managedBy    = "snapshot.storage.kubernetes.io/managed-by"
)

// snapshotRestore takes a snapshot of web-0's volume, changes the volume,
// and restores the snapshot into a new claim whose pod reads the note of
// the snapshot's moment.
func (d *demo) snapshotRestore(ctx context.Context) error {
	const pod = stsName + "-0"
	d.p.step("snapshot %s's volume, change it, restore the snapshot into a new claim", pod)
	snaps, err := snapclientset.NewForConfig(d.f.Config)
	if err != nil {
		return err
	}
	if err := d.removeEarlierRestore(ctx, snaps); err != nil {
		return err
	}
	d.cmd("kubectl apply -f %s", snapshotFile)
	if _, err := d.f.ApplyFile(ctx, demoNamespace, snapshotFile); err != nil {
		return err
	}
	content, err := readySnapshot(ctx, snaps)
	if err != nil {
		return err
	}
	d.p.logf("%s is ready: taken by the agent of %s (content %s), %s", snapshotName, content.Labels[managedBy],
		content.Name, snapshotWhere(content))

	changed := fmt.Sprintf("changed by make demo after the snapshot, at %s", time.Now().UTC().Format(time.TimeOnly))
	d.cmd("kubectl exec %s -- sh -c 'echo \"%s\" > /data/note'", pod, changed)
	if _, err := d.f.Exec(ctx, demoNamespace, pod, nil, "sh", "-c", `echo "$1" > /data/note`, "sh", changed); err != nil {
		return err
	}

	d.cmd("kubectl apply -f %s", restoreFile)
	if _, err := d.f.ApplyFile(ctx, demoNamespace, restoreFile); err != nil {
		return err
	}
	restored, err := d.podRunning(ctx, restoredName)
	if err != nil {
		return err
	}
	d.p.logf("%s runs on %s, next to %s, with claim %s made from the snapshot", restoredName, restored.Spec.NodeName, pod, restoredName)
	d.cmd("kubectl exec %s -- cat /data/note", restoredName)
	out, err := d.f.Exec(ctx, demoNamespace, restoredName, nil, "cat", "/data/note")
	if err != nil {
		return err
	}
	note := strings.TrimSpace(string(out))
	d.p.logf("%s", note)
	if note != d.notes[pod] {
		return fmt.Errorf("the restore holds note %q, want the one of the snapshot's moment, %q", note, d.notes[pod])
	}
	d.p.logf("the restore has the note of the snapshot's moment; %s has its new one", pod)
	return nil
}

// readySnapshot waits for the snapshot to be ready and returns its content.
func readySnapshot(ctx context.Context, snaps snapclientset.Interface) (*snapv1.VolumeSnapshotContent, error) {
	var content *snapv1.VolumeSnapshotContent
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		s, err := snaps.SnapshotV1().VolumeSnapshots(demoNamespace).Get(ctx, snapshotName, metav1.GetOptions{})
		if err != nil || s.Status == nil || !ptr.Deref(s.Status.ReadyToUse, false) || s.Status.BoundVolumeSnapshotContentName == nil {
			return false, err
		}
		content, err = snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, *s.Status.BoundVolumeSnapshotContentName, metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("VolumeSnapshot %s not ready: %w (is the snapshot-controller running?)", snapshotName, err)
	}
	return content, nil
}

// snapshotWhere says where the snapshot lies on its node.
func snapshotWhere(c *snapv1.VolumeSnapshotContent) string {
	if c.Status == nil || c.Status.SnapshotHandle == nil {
		return "no handle yet"
	}
	return "kept as /var/lib/stickyvol/snapshots/" + *c.Status.SnapshotHandle
}

// podRunning waits until pod name is Ready.
func (d *demo) podRunning(ctx context.Context, name string) (*v1.Pod, error) {
	var pod *v1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := d.f.Client.CoreV1().Pods(demoNamespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		pod = p
		return err == nil && framework.PodReady(p), err
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s not Ready: %w", name, err)
	}
	return pod, nil
}

// removeEarlierRestore deletes what an earlier demo on an attached cluster
// left of this part: the restore's pod and claim (first: the
// snapshot-controller keeps a snapshot a pending claim restores) and the
// snapshot.
func (d *demo) removeEarlierRestore(ctx context.Context, snaps snapclientset.Interface) error {
	cs := d.f.Client.CoreV1()
	if err := cs.Pods(demoNamespace).Delete(ctx, restoredName, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := cs.PersistentVolumeClaims(demoNamespace).Delete(ctx, restoredName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	err := snaps.SnapshotV1().VolumeSnapshots(demoNamespace).Delete(ctx, snapshotName, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	d.p.logf("removing %s and its restore, left by an earlier run", snapshotName)
	return wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, perr := cs.Pods(demoNamespace).Get(ctx, restoredName, metav1.GetOptions{})
		_, serr := snaps.SnapshotV1().VolumeSnapshots(demoNamespace).Get(ctx, snapshotName, metav1.GetOptions{})
		return apierrors.IsNotFound(perr) && apierrors.IsNotFound(serr), nil
	})
}
