package duties

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// LeaderConfig configures RunLeaderElected.
type LeaderConfig struct {
	Client kubernetes.Interface
	// Namespace and Name of the coordination.k8s.io Lease.
	Namespace, Name string
	// Identity of this candidate, unique among candidates: the pod name.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod as in client-go's
	// leaderelection; zero means 15s, 10s and 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// RunLeaderElected campaigns for the Lease and runs duty while it holds it,
// until ctx is done. duty gets a context that ends when the lease is lost;
// then RunLeaderElected waits for duty to return and campaigns again. Unlike
// the library's own election it never exits the process: a replica that
// lost the Lease keeps its caches warm and stands by, with no restart (and
// no restart count that looks like a crash).
//
// Two duties never run at once:
//   - On shutdown the lease is released, so another node takes over at once
//     instead of after LeaseDuration, but only once duty has returned.
//     client-go's ReleaseOnCancel is not used for this: its elector
//     releases the lease as soon as its renew loop ends, while the duty,
//     started in a goroutine of its own, may still be running (seen as a
//     flaky overlap in this package's test under load).
//   - When renewing fails, the duty's context ends at RenewDeadline, and no
//     other candidate may take the lease before LeaseDuration has passed
//     since the last renewal it saw: a duty has LeaseDuration-RenewDeadline
//     (5 s by default) to stop. The duties' writes carry preconditions
//     (see Placement), so even a duty that overran could not undo or repeat
//     what the new leader did.
func RunLeaderElected(ctx context.Context, cfg LeaderConfig, duty func(context.Context)) error {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Name == "" || cfg.Identity == "" {
		return errors.New("leader election: client, namespace, name and identity are required")
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, cfg.Namespace, cfg.Name,
		cfg.Client.CoreV1(), cfg.Client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: cfg.Identity})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	logger := klog.FromContext(ctx).WithValues("lease", klog.KRef(cfg.Namespace, cfg.Name))
	for ctx.Err() == nil {
		// The elector calls OnStartedLeading in a goroutine of its own
		// and offers no hook before it starts it; done lets this loop
		// wait for the duty before it releases the lease or campaigns
		// again. A duty that starts only after Run returned gets a
		// cancelled context and returns at once.
		var mu sync.Mutex
		var done chan struct{}
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:          lock,
			LeaseDuration: orDefault(cfg.LeaseDuration, 15*time.Second),
			RenewDeadline: orDefault(cfg.RenewDeadline, 10*time.Second),
			RetryPeriod:   orDefault(cfg.RetryPeriod, 2*time.Second),
			Name:          cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					mu.Lock()
					d := make(chan struct{})
					done = d
					mu.Unlock()
					defer close(d)
					logger.Info("Leading: running cluster duties")
					duty(ctx)
				},
				OnStoppedLeading: func() { logger.V(2).Info("Not leading") },
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		elector.Run(ctx)
		mu.Lock()
		d := done
		mu.Unlock()
		if d != nil {
			<-d
		}
		if ctx.Err() != nil {
			release(context.WithoutCancel(ctx), lock, cfg.Identity)
		}
	}
	return nil
}

// release gives up the lease if this candidate still holds it, the way
// client-go's elector does on cancel: no holder, and a duration of one
// second, so others take it at their next retry.
func release(ctx context.Context, lock resourcelock.Interface, identity string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	logger := klog.FromContext(ctx)
	record, _, err := lock.Get(ctx)
	if err != nil || record.HolderIdentity != identity {
		// Lost meanwhile, or unreadable: it expires by itself.
		return
	}
	now := metav1.NewTime(time.Now())
	if err := lock.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaderTransitions:    record.LeaderTransitions,
		LeaseDurationSeconds: 1,
		RenewTime:            now,
		AcquireTime:          now,
	}); err != nil {
		logger.Error(err, "Releasing the lease; it expires by itself")
		return
	}
	logger.V(2).Info("Released the lease")
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
