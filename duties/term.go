package duties

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/events"
	"github.com/stickyvol/stickyvol/provisioner"
)

// What every duty sets up for a leadership term: informers in sync, an event
// recorder, a work queue with per-item backoff, and a worker.

// dutyTerm is what each duty's term has: its work queue and its event
// recorder.
type dutyTerm struct {
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
}

// runTerm runs one leadership term of duty name: with a context whose
// logger is named name, once the informers are in sync, it calls body with
// a work queue and an event recorder of component stickyvol-<name>, and
// shuts both down when body returns. A term over before it began (ctx done
// while waiting) returns nil.
func runTerm(ctx context.Context, name string, client kubernetes.Interface, factories []informers.SharedInformerFactory,
	body func(context.Context, dutyTerm) error) error {
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithName(name))
	if err := waitForCaches(ctx, name, factories...); errors.Is(err, errStopped) {
		return nil
	} else if err != nil {
		return err
	}
	recorder, stop := events.NewRecorder(ctx, client, v1.EventSource{Component: "stickyvol-" + name})
	defer stop()
	dt := dutyTerm{queue: newQueue(name), recorder: recorder}
	defer dt.queue.ShutDown()
	return body(ctx, dt)
}

// work calls handle for the keys of the term's queue, one at a time, until
// ctx is done.
func (dt dutyTerm) work(ctx context.Context, handle func(context.Context, string) error) {
	var worker sync.WaitGroup
	worker.Go(func() { process(ctx, dt.queue, handle) })
	<-ctx.Done()
	dt.queue.ShutDown()
	worker.Wait()
}

// waitForCaches waits until the factories' informers have synced. It
// returns errStopped when ctx ends first: the term was over before it
// began, which is not an error.
func waitForCaches(ctx context.Context, duty string, factories ...informers.SharedInformerFactory) error {
	for _, f := range factories {
		if err := f.WaitForCacheSyncWithContext(ctx).AsError(); err != nil {
			if ctx.Err() != nil {
				return errStopped
			}
			return fmt.Errorf("%s: waiting for informers: %w", duty, err)
		}
	}
	return nil
}

// errStopped is waitForCaches' answer when the term ended first.
var errStopped = errors.New("stopped")

// newQueue is a duty's work queue: each key retried with exponential
// backoff from one second to one minute.
func newQueue(name string) workqueue.TypedRateLimitingInterface[string] {
	return workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: name})
}

// errWaiting says a key still has work that waits for something else (a
// pod to become Pending, a claim to go): it is looked at again, with
// backoff, and nothing is logged.
var errWaiting = errors.New("waiting")

// process calls handle for each key of queue until the queue shuts down. A
// key whose handling fails is retried with the queue's backoff.
func process(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], handle func(context.Context, string) error) {
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return
		}
		switch err := handle(ctx, key); {
		case err == nil:
			queue.Forget(key)
		case errors.Is(err, errWaiting):
			queue.AddRateLimited(key)
		default:
			klog.FromContext(ctx).V(2).Info("Duty failed, will retry", "key", key, "err", err)
			queue.AddRateLimited(key)
		}
		queue.Done(key)
	}
}

// selectNode sets the claim's selected-node annotation, only on the claim
// version the decision was made on: a claim that changed meanwhile, or that
// a former leader handled, is not handled twice.
func selectNode(ctx context.Context, client kubernetes.Interface, claim *v1.PersistentVolumeClaim, node string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": claim.ResourceVersion,
		"annotations":     map[string]string{provisioner.AnnSelectedNode: node},
	}})
	if err != nil {
		return err
	}
	_, err = client.CoreV1().PersistentVolumeClaims(claim.Namespace).Patch(ctx, claim.Name,
		types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// podsUsing lists the pods of the claim's namespace that use it, as a
// claim or as the claim of a generic ephemeral volume, and are not being
// deleted.
func podsUsing(ctx context.Context, client kubernetes.Interface, claim *v1.PersistentVolumeClaim) ([]*v1.Pod, error) {
	list, err := client.CoreV1().Pods(claim.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var pods []*v1.Pod
	for i := range list.Items {
		pod := &list.Items[i]
		if pod.DeletionTimestamp == nil && slices.ContainsFunc(pod.Spec.Volumes, func(vol v1.Volume) bool {
			return vol.PersistentVolumeClaim != nil && vol.PersistentVolumeClaim.ClaimName == claim.Name ||
				vol.Ephemeral != nil && pod.Name+"-"+vol.Name == claim.Name
		}) {
			pods = append(pods, pod)
		}
	}
	return pods, nil
}
