package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/capacity"
	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/driver/registration"
	"github.com/stickyvol/stickyvol/internal/cachetrim"
	"github.com/stickyvol/stickyvol/internal/events"
	"github.com/stickyvol/stickyvol/provisioner"
	"github.com/stickyvol/stickyvol/resizer"
	"github.com/stickyvol/stickyvol/snapshotter"
)

// agent is everything `stickyvol node` runs, built and ready to start.
type agent struct {
	opts         *nodeOptions
	driver       *driver.Driver
	csiConn      *grpc.ClientConn
	identity     csi.IdentityClient
	informers    informers.SharedInformerFactory
	controller   *provisioner.Controller
	reconciler   *provisioner.Reconciler
	registration *registration.Server     // nil without kubelet
	capacity     *capacity.Publisher      // nil with --publish-capacity=false
	resizer      *resizer.Resizer         // nil with --expand-volumes=false
	snapshotter  *snapshotter.Snapshotter // nil with --snapshots=false
	kube         kubernetes.Interface
}

// newAgent builds the parts; nothing runs yet. The driver reloads its
// records here, so a broken data root fails before anything is served.
// snaps is nil with --snapshots=false.
func newAgent(ctx context.Context, o *nodeOptions, kube kubernetes.Interface, snaps snapclientset.Interface) (*agent, error) {
	a := &agent{opts: o, kube: kube}
	dcfg := o.driverConfig()
	dcfg.Logger = klog.FromContext(ctx)
	dcfg.VolumesChanged = a.volumesChanged
	d, err := driver.New(dcfg)
	if err != nil {
		return nil, fmt.Errorf("driver: %w", err)
	}
	// The provisioner talks to the driver over its socket like any CSI
	// client; grpc.NewClient connects lazily, once the driver listens.
	// The socket is local and comes up within milliseconds: reconnect
	// after 100ms, not gRPC's default first backoff of a second.
	backoffCfg := backoff.DefaultConfig
	backoffCfg.BaseDelay, backoffCfg.MaxDelay = 100*time.Millisecond, 5*time.Second
	conn, err := grpc.NewClient("unix://"+o.csiSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffCfg}))
	if err != nil {
		return nil, errors.Join(err, d.Close())
	}
	a.driver, a.csiConn, a.identity = d, conn, csi.NewIdentityClient(conn)
	// Every claim, PV and StorageClass of the cluster, without the
	// managedFields no part reads (see package cachetrim for why nothing
	// else can go).
	a.informers = informers.NewSharedInformerFactoryWithOptions(kube, provisioner.DefaultResyncPeriod,
		informers.WithTransform(cachetrim.ManagedFields))
	if err := a.build(ctx, kube, snaps); err != nil {
		return nil, errors.Join(err, conn.Close(), d.Close())
	}
	return a, nil
}

func (a *agent) build(ctx context.Context, kube kubernetes.Interface, snaps snapclientset.Interface) error {
	o := a.opts
	var snapshotReader provisioner.SnapshotReader
	if snaps != nil {
		snapshotReader = provisioner.ClientSnapshots(snaps)
	}
	ctrl, err := provisioner.NewController(ctx, provisioner.ControllerConfig{
		Provisioner: provisioner.Config{
			NodeName:         o.nodeName,
			DriverName:       driver.Name,
			TopologyKey:      driver.TopologyKey,
			ControllerClient: csi.NewControllerClient(a.csiConn),
			Snapshots:        snapshotReader,
			Timeout:          o.operationTimeout,
		},
		Client:      kube,
		Informers:   a.informers,
		Threadiness: o.threadiness,
	})
	if err != nil {
		return err
	}
	a.controller = ctrl
	a.reconciler, err = provisioner.NewReconciler(provisioner.ReconcilerConfig{
		NodeName: o.nodeName, DriverName: driver.Name, TopologyKey: driver.TopologyKey,
		ControllerClient: csi.NewControllerClient(a.csiConn), Client: kube, Informers: a.informers,
		Period: o.reconcilePeriod, DeleteOrphansAfter: o.deleteOrphansAfter,
	})
	if err != nil {
		return err
	}
	if o.publishCapacity {
		a.capacity, err = capacity.New(capacity.Config{
			NodeName: o.nodeName, DriverName: driver.Name, TopologyKey: driver.TopologyKey,
			Namespace: o.namespace, ControllerClient: csi.NewControllerClient(a.csiConn), Client: kube,
			Informers: a.informers, OwnerPod: o.capacityOwner, Timeout: o.operationTimeout,
		})
		if err != nil {
			return err
		}
	}
	if o.expandVolumes {
		a.resizer, err = resizer.New(resizer.Config{
			NodeName: o.nodeName, DriverName: driver.Name, TopologyKey: driver.TopologyKey,
			ControllerClient: csi.NewControllerClient(a.csiConn), Client: kube, Informers: a.informers,
			Timeout: o.operationTimeout,
		})
		if err != nil {
			return err
		}
	}
	if snaps != nil {
		a.snapshotter, err = snapshotter.New(snapshotter.Config{
			NodeName: o.nodeName, DriverName: driver.Name, Conn: a.csiConn, Client: kube, Snapshots: snaps,
		})
		if err != nil {
			return err
		}
	}
	if o.registerWithKubelet {
		a.registration, err = registration.New(registration.Config{
			DriverName: driver.Name,
			Endpoint:   o.csiSocket(),
			SocketPath: registration.SocketPath(o.kubeletRoot, driver.Name),
		})
	}
	return err
}

// run starts the parts and returns when ctx is done or one of them fails,
// after all have stopped. The driver stops last, so that provisioning calls
// in flight finish and kubelet is told the driver is gone (registration
// socket removed) before its CSI socket goes away.
func (a *agent) run(ctx context.Context) error {
	defer func() {
		if err := errors.Join(a.csiConn.Close(), a.driver.Close()); err != nil {
			klog.FromContext(ctx).Error(err, "Closing the driver")
		}
	}()
	// The driver's context is not the parts' context: a signal stops the
	// parts first, and only then, when they have returned, the driver.
	driverCtx, stopDriver := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDriver()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.driver.Run(driverCtx); err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		defer stopDriver()
		return a.runParts(gctx)
	})
	return g.Wait()
}

// runParts waits for the driver to answer, then runs everything that uses it.
func (a *agent) runParts(ctx context.Context) error {
	if err := waitForDriver(ctx, a.identity); err != nil {
		return err
	}
	reportUnavailable(ctx, a.kube, a.driver.Unavailable())
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.controller.Run(ctx) })
	g.Go(func() error { return a.reconciler.Run(ctx) })
	if a.capacity != nil {
		g.Go(func() error { return a.capacity.Run(ctx) })
	} else if a.opts.namespace != "" {
		// What this node published before --publish-capacity=false would
		// stay, untrue, for the placement duty to read.
		g.Go(func() error {
			if err := capacity.Withdraw(ctx, a.kube, a.opts.namespace, driver.Name, a.opts.nodeName); err != nil {
				klog.FromContext(ctx).Error(err, "Withdrawing this node's storage capacity")
			}
			return nil
		})
	}
	if a.resizer != nil {
		g.Go(func() error { return a.resizer.Run(ctx) })
	}
	if a.snapshotter != nil {
		g.Go(func() error { return a.snapshotter.Run(ctx) })
	}
	if a.registration != nil {
		// Only now: kubelet calls NodeGetInfo on the CSI socket as soon as
		// it sees this one.
		g.Go(func() error { return a.registration.Run(ctx) })
	}
	if a.opts.metricsAddress != "" {
		g.Go(func() error { return serveHTTP(ctx, a.opts.metricsAddress, a.httpHandler()) })
	}
	err := g.Wait()
	// The informers stop with ctx, which Wait has cancelled, but in
	// goroutines of their own: wait for those too, so that nothing of the
	// agent still runs when run returns.
	a.informers.Shutdown()
	return err
}

// volumesChanged is the driver's Config.VolumesChanged: a volume was made,
// grown or deleted, so the published capacity is looked at again, at once
// when the room shrank. The publisher is built after the driver and before
// the driver serves.
func (a *agent) volumesChanged(less bool) {
	switch {
	case a.capacity == nil:
	case less:
		a.capacity.NotifyNow()
	default:
		a.capacity.Notify()
	}
}

// waitForDriver blocks until the driver answers Probe with ready, or ctx
// ends. WaitForReady makes the call wait for the socket instead of failing
// while the driver is still starting.
func waitForDriver(ctx context.Context, identity csi.IdentityClient) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := identity.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("waiting for the driver to answer: %w", err)
	}
	if r := resp.GetReady(); r != nil && !r.GetValue() {
		return errors.New("the driver says it is not ready")
	}
	return nil
}

// reportUnavailable puts a Warning event on the PV of each volume the
// driver does not serve (its record was corrupt and is set aside), so that
// `kubectl describe pv` says why its pod cannot mount it and what to do. The
// driver has logged each one already; the metric
// stickyvol_unavailable_volumes counts them.
func reportUnavailable(ctx context.Context, kube kubernetes.Interface, unavailable map[string]string) {
	if len(unavailable) == 0 {
		return
	}
	logger := klog.FromContext(ctx)
	recorder, stop := events.NewRecorder(ctx, kube, v1.EventSource{Component: driver.Name})
	// Events are sent in the background: the recorder lives with ctx.
	go func() {
		<-ctx.Done()
		stop()
	}()
	for _, id := range slices.Sorted(maps.Keys(unavailable)) {
		// The volume ID is the PV's name.
		pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, id, metav1.GetOptions{})
		if err != nil {
			logger.Error(err, "No PV to report an unavailable volume on", "volumeID", id)
			continue
		}
		recorder.Eventf(pv, v1.EventTypeWarning, "VolumeUnavailable", "Volume %s on this node is not served: %s", id, unavailable[id])
	}
}
