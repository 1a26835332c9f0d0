package framework

import (
	"context"
	"fmt"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// Snapshots returns a client of the snapshot API of the cluster.
func (f *Framework) Snapshots() (snapclientset.Interface, error) {
	return snapclientset.NewForConfig(f.Config)
}

// WaitForSnapshot waits until VolumeSnapshot namespace/name is ready and
// bound to a content with a snapshot handle, and returns that content. It
// polls: the snapshot API has no typed watch helpers here, and a snapshot
// is ready within seconds.
func (f *Framework) WaitForSnapshot(ctx context.Context, namespace, name string) (*snapv1.VolumeSnapshotContent, error) {
	snaps, err := f.Snapshots()
	if err != nil {
		return nil, err
	}
	var content *snapv1.VolumeSnapshotContent
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		s, err := snaps.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil || s.Status == nil || !ptr.Deref(s.Status.ReadyToUse, false) || s.Status.BoundVolumeSnapshotContentName == nil {
			return false, nil
		}
		content, err = snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, *s.Status.BoundVolumeSnapshotContentName, metav1.GetOptions{})
		return err == nil && content.Status != nil && content.Status.SnapshotHandle != nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for VolumeSnapshot %s/%s to be ready: %w", namespace, name, err)
	}
	return content, nil
}
