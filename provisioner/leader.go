package provisioner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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
	// Identity of this candidate, unique among candidates: the node name.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod as in client-go's
	// leaderelection; zero means 15s, 10s and 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// RunLeaderElected campaigns for the Lease and runs duty while it holds it,
// until ctx is done. duty gets a context that ends when the lease is lost;
// then RunLeaderElected waits for duty to return and campaigns again. Unlike
// the library's own election it never exits the process: the same process
// serves this node's volumes, which must not stop because another node took
// over the cluster duties.
//
// On shutdown the lease is released (ReleaseOnCancel), so another node takes
// over at once instead of after LeaseDuration. That is safe because the
// duties write with preconditions (see Placement) and never act twice on the
// same version of an object.
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
		// wait for the duty before the next campaign. A duty that starts
		// only after Run returned gets a cancelled context and returns
		// at once.
		var mu sync.Mutex
		var done chan struct{}
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   orDefault(cfg.LeaseDuration, 15*time.Second),
			RenewDeadline:   orDefault(cfg.RenewDeadline, 10*time.Second),
			RetryPeriod:     orDefault(cfg.RetryPeriod, 2*time.Second),
			ReleaseOnCancel: true,
			Name:            cfg.Name,
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
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
