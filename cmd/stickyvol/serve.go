package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/agentapi"
	"github.com/stickyvol/stickyvol/provisioner"
)

// httpHandler serves /healthz, /readyz, /metrics and /volumes on a mux of its
// own, with a registry of its own: nothing registered globally by a library
// leaks in.
func (a *agent) httpHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stickyvol_capacity_bytes",
			Help: "Bytes the volumes on this node may reserve in total.",
		}, func() float64 { return float64(a.driver.Capacity()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stickyvol_allocated_bytes",
			Help: "Bytes the volumes on this node reserve.",
		}, func() float64 { return float64(a.driver.Allocated()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stickyvol_volumes",
			Help: "Volumes on this node.",
		}, func() float64 { return float64(len(a.driver.Volumes())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stickyvol_unavailable_volumes",
			Help: "Volumes on this node that are not served because their record was corrupt and is set aside.",
		}, func() float64 { return float64(len(a.driver.Unavailable())) }),
	)
	// The provisioning library's counters and histograms:
	// controller_persistentvolumeclaim_provision_{total,failed_total,duration_seconds}
	// and controller_persistentvolume_delete_{total,failed_total,duration_seconds}.
	reg.MustRegister(a.controller.Collectors()...)
	reg.MustRegister(a.reconciler.Collectors()...)
	if a.capacity != nil {
		reg.MustRegister(a.capacity.Collectors()...)
	}

	driverCheck := healthCheck{"driver", func(ctx context.Context) error { return probe(ctx, a.identity) }}
	live := []healthCheck{driverCheck}
	// Ready: the driver answers, kubelet has registered it (so pods on this
	// node can mount its volumes) and the provisioner's informers have
	// synced (so claims scheduled here are provisioned). `kubectl rollout
	// status` waits for this before it calls a new version rolled out.
	ready := []healthCheck{driverCheck, {"provisioner", func(context.Context) error { return a.controller.Synced() }}}
	if a.registration != nil {
		live = append(live, healthCheck{"kubelet registration", func(context.Context) error { return a.registration.Check() }})
		ready = append(ready, healthCheck{"kubelet registration", func(context.Context) error { return a.registration.Registered() }})
	}
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", healthzHandler(live))
	mux.Handle("GET /readyz", healthzHandler(ready))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("GET "+agentapi.Path, volumesHandler(a.opts.nodeName, a.reconciler.Findings, a.driver.Unavailable))
	if a.opts.profiling {
		handleProfiling(mux)
	}
	return mux
}

const profilingUsage = "Serve Go's runtime profiles (CPU, heap, goroutines, execution trace) under /debug/pprof/ on " +
	"--metrics-address, for `go tool pprof`. Anyone who can reach that address can read them and make the process " +
	"spend CPU on a profile."

var errProfilingWithoutServer = errors.New("--profiling needs --metrics-address: the profiles are served there")

// handleProfiling puts net/http/pprof's handlers on mux (--profiling).
// Importing net/http/pprof also registers them on http.DefaultServeMux,
// which nothing here serves.
func handleProfiling(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index) // the named profiles too: heap, goroutine, allocs, ...
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// volumesHandler serves what only this node knows about its volumes (the
// reconciler's orphans and missing volumes, the driver's unavailable ones)
// as an agentapi.NodeVolumes document, for `stickyvol status`.
func volumesHandler(node string, findings func() provisioner.Findings, unavailable func() map[string]string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(nodeVolumes(node, findings(), unavailable())); err != nil {
			klog.FromContext(r.Context()).V(2).Info("Writing the volumes document failed", "err", err)
		}
	})
}

// nodeVolumes builds the document; its lists are empty rather than absent,
// sorted by volume ID or PV name.
func nodeVolumes(node string, f provisioner.Findings, unavailable map[string]string) agentapi.NodeVolumes {
	doc := agentapi.NodeVolumes{
		APIVersion: agentapi.APIVersion, Kind: agentapi.Kind, Node: node, Checked: metav1.NewTime(f.Checked),
		Orphans: []agentapi.Orphan{}, Missing: []agentapi.Missing{}, Unavailable: []agentapi.Unavailable{},
	}
	for _, o := range f.Orphans {
		doc.Orphans = append(doc.Orphans, agentapi.Orphan{VolumeID: o.VolumeID, Since: metav1.NewTime(o.Since)})
	}
	for _, m := range f.Missing {
		doc.Missing = append(doc.Missing, agentapi.Missing{PV: m.PV, VolumeID: m.VolumeID,
			ClaimNamespace: m.Claim.Namespace, Claim: m.Claim.Name})
	}
	for _, id := range slices.Sorted(maps.Keys(unavailable)) {
		doc.Unavailable = append(doc.Unavailable, agentapi.Unavailable{VolumeID: id, Reason: unavailable[id]})
	}
	return doc
}

type healthCheck struct {
	name  string
	check func(context.Context) error
}

// healthzHandler answers 200 "ok" when every check passes, else 503 with
// the failures, one per line. On 503 the liveness probe (/healthz) restarts
// the pod; the readiness probe (/readyz) marks it not ready.
func healthzHandler(checks []healthCheck) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var failed []error
		for _, c := range checks {
			if err := c.check(ctx); err != nil {
				failed = append(failed, fmt.Errorf("%s: %w", c.name, err))
			}
		}
		if len(failed) > 0 {
			klog.FromContext(ctx).V(2).Info("Health check failed", "err", errors.Join(failed...))
			http.Error(w, errors.Join(failed...).Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}

// probe calls the driver's Probe over its socket, as kubelet would reach it.
func probe(ctx context.Context, identity csi.IdentityClient) error {
	resp, err := identity.Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return err
	}
	if r := resp.GetReady(); r != nil && !r.GetValue() {
		return errors.New("not ready")
	}
	return nil
}

// serveHTTP serves h on addr until ctx is done.
func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics address: %w", err)
	}
	logger := klog.FromContext(ctx)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		// Requests get ctx's logger, and are not cut off by its end:
		// Shutdown lets them finish.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	logger.Info("Serving /healthz, /readyz, /metrics and /volumes", "address", lis.Addr().String())
	select {
	case err := <-done:
		return fmt.Errorf("serving %s: %w", addr, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("stopping the HTTP server: %w", err)
	}
	return nil
}
