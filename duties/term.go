package duties

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// What every duty sets up for a leadership term: informers in sync, an event
// recorder, a work queue with per-item backoff, and a worker.

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

// process calls sync for each key of queue until the queue shuts down. A
// key whose sync fails is retried with the queue's backoff.
func process(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], sync func(context.Context, string) error) {
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return
		}
		switch err := sync(ctx, key); {
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
