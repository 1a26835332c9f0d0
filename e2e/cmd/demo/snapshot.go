package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
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
	snaps, err := d.f.Snapshots()
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
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	content, err := d.f.WaitForSnapshot(waitCtx, demoNamespace, snapshotName)
	cancel()
	if err != nil {
		return fmt.Errorf("%w (is the snapshot-controller running?)", err)
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
	restored, err := d.f.WaitForPodReady(ctx, demoNamespace, restoredName)
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

// snapshotWhere says where the snapshot lies on its node.
func snapshotWhere(c *snapv1.VolumeSnapshotContent) string {
	if c.Status == nil || c.Status.SnapshotHandle == nil {
		return "no handle yet"
	}
	return "kept as /var/lib/stickyvol/snapshots/" + *c.Status.SnapshotHandle
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
