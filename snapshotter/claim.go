package snapshotter

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/utils"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Pre-provisioned contents (a VolumeSnapshotContent made by hand, or by a
// backup tool, naming a snapshot that already exists by its handle) carry
// no managed-by label: the snapshot-controller finds a node only from a
// source PV, and such a content has none. No agent's informer would list
// it, and its VolumeSnapshot would never be ready.
//
// So each agent also watches the contents of no node, which are few, and
// claims those whose snapshot its own driver holds: it asks the driver
// (ListSnapshots with the handle) and, if the snapshot is there, labels the
// content with its node. The sidecar controller of that agent then sees
// the content and checks it as csi-snapshotter would. A handle no node
// holds stays unclaimed, and its VolumeSnapshot says not ready, which is
// what it is.

// claimer labels the unlabelled pre-provisioned contents of this node's
// snapshots.
type claimer struct {
	cfg    Config
	ctrl   csi.ControllerClient
	lister cache.Indexer
	queue  workqueue.TypedRateLimitingInterface[string]
}

// unlabelled is the selector of the contents of no node.
const unlabelled = "!" + utils.VolumeSnapshotContentManagedByLabel

func newClaimer(cfg Config, factory snapinformers.SharedInformerFactory) (*claimer, error) {
	c := &claimer{
		cfg:  cfg,
		ctrl: csi.NewControllerClient(cfg.Conn),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "stickyvol-snapshot-claims"}),
	}
	informer := factory.Snapshot().V1().VolumeSnapshotContents().Informer()
	c.lister = informer.GetIndexer()
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj any) { c.enqueue(obj) },
	})
	return c, err
}

func (c *claimer) enqueue(obj any) {
	if content, ok := obj.(*snapv1.VolumeSnapshotContent); ok && c.wants(content) {
		c.queue.Add(content.Name)
	}
}

// wants tells whether the content is a pre-provisioned one of this driver.
func (c *claimer) wants(content *snapv1.VolumeSnapshotContent) bool {
	return content.Spec.Driver == c.cfg.DriverName && content.Spec.Source.SnapshotHandle != nil &&
		content.Labels[utils.VolumeSnapshotContentManagedByLabel] == ""
}

// run works the queue until ctx is done.
func (c *claimer) run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		for c.next(ctx) {
		}
	}, time.Second)
}

func (c *claimer) next(ctx context.Context) bool {
	name, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(name)
	if err := c.claim(ctx, name); err != nil {
		klog.FromContext(ctx).Error(err, "Claiming a pre-provisioned VolumeSnapshotContent", "content", name)
		c.queue.AddRateLimited(name)
		return true
	}
	c.queue.Forget(name)
	return true
}

// claim labels content name with this node if this node's driver holds its
// snapshot.
func (c *claimer) claim(ctx context.Context, name string) error {
	obj, ok, err := c.lister.GetByKey(name)
	if err != nil || !ok {
		return err
	}
	content := obj.(*snapv1.VolumeSnapshotContent)
	if !c.wants(content) {
		return nil
	}
	handle := *content.Spec.Source.SnapshotHandle
	callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	resp, err := c.ctrl.ListSnapshots(callCtx, &csi.ListSnapshotsRequest{SnapshotId: handle})
	if err != nil {
		return fmt.Errorf("asking the driver for snapshot %s: %w", handle, err)
	}
	if len(resp.GetEntries()) == 0 {
		return nil // another node's, or none's
	}
	// The resourceVersion makes the patch fail if the content changed
	// since it was read without a label: two agents can never both claim
	// one content.
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": content.ResourceVersion,
		"labels":          map[string]string{utils.VolumeSnapshotContentManagedByLabel: c.cfg.NodeName},
	}})
	if err != nil {
		return err
	}
	_, err = c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("labelling content %s with node %s: %w", name, c.cfg.NodeName, err)
	}
	klog.FromContext(ctx).Info("Claimed a pre-provisioned VolumeSnapshotContent: its snapshot is on this node", "content", name, "snapshot", handle)
	return nil
}
