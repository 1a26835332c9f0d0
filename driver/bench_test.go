package driver

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// The benchmarks go through the real unix socket, gRPC and the data root on
// the test's temporary directory, with every fsync, so ops/s is what a CO
// would see on this machine's disk.

// BenchmarkCreateDeleteVolume measures one CreateVolume plus one
// DeleteVolume of a fresh volume per op.
func BenchmarkCreateDeleteVolume(b *testing.B) {
	testutil.RequireRoot(b)
	ts := startServer(b, testConfig(b))
	ctx := testContext(b)
	n := 0
	for b.Loop() {
		id := fmt.Sprintf("pvc-bench-%d", n)
		if _, err := ts.controller.CreateVolume(ctx, createRequest(id)); err != nil {
			b.Fatal(err)
		}
		if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkCreateDeleteVolumeParallel is BenchmarkCreateDeleteVolume from
// 8 clients at once per CPU, as the provisioning library's workers call
// the driver when a StatefulSet's claims arrive together: concurrent calls
// share the store's fsyncs (dirSync).
func BenchmarkCreateDeleteVolumeParallel(b *testing.B) {
	testutil.RequireRoot(b)
	ts := startServer(b, testConfig(b))
	ctx := testContext(b)
	var next atomic.Int64
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("pvc-bench-%d", next.Add(1))
			if _, err := ts.controller.CreateVolume(ctx, createRequest(id)); err != nil {
				b.Error(err)
				return
			}
			if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(next.Load())/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkPublishUnpublish measures one NodePublishVolume (bind mount,
// target recorded) plus one NodeUnpublishVolume per op.
func BenchmarkPublishUnpublish(b *testing.B) {
	testutil.RequireRoot(b)
	ts := startServer(b, testConfig(b))
	ctx := testContext(b)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("pvc-bench")); err != nil {
		b.Fatal(err)
	}
	target := filepath.Join(ts.dir, "target")
	unpublish := &csi.NodeUnpublishVolumeRequest{VolumeId: "pvc-bench", TargetPath: target}
	n := 0
	for b.Loop() {
		if _, err := ts.node.NodePublishVolume(ctx, publishRequest("pvc-bench", target)); err != nil {
			b.Fatal(err)
		}
		if _, err := ts.node.NodeUnpublishVolume(ctx, unpublish); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "ops/s")
}
