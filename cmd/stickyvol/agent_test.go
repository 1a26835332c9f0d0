package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/driver/registration"
	"github.com/stickyvol/stickyvol/internal/agentapi"
)

func freeAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func poll(t *testing.T, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, 20*time.Second, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// The whole `stickyvol node` agent as a host process against a fake API
// server: it registers with "kubelet", provisions a claim for its node,
// grows it, answers /healthz, /metrics and /volumes, and removes its sockets when
// stopped.
func TestNodeAgent(t *testing.T) {
	root, err := os.MkdirTemp("", "svnode") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	o := &nodeOptions{
		nodeName: "node-a", kubeletRoot: filepath.Join(root, "kubelet"), dataRoot: filepath.Join(root, "data"),
		capacity: "1Gi", socketGroup: -1, qps: 50, burst: 100, threadiness: 2, operationTimeout: 10 * time.Second,
		metricsAddress: freeAddress(t), profiling: true, registerWithKubelet: true,
		reconcilePeriod: time.Minute, publishCapacity: true, namespace: "stickyvol", capacityOwner: "stickyvol-node-x1",
		expandVolumes: true,
	}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	// A record that cannot be read: its volume is set aside as unavailable.
	if err := os.MkdirAll(filepath.Join(o.dataRoot, "meta"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(o.dataRoot, "meta", "pvc-bad.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	wffc, allowExpansion := storagev1.VolumeBindingWaitForFirstConsumer, true
	yes := true
	daemonSet := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "stickyvol-node", UID: "uid-ds", Controller: &yes}
	kube := fake.NewClientset(
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "stickyvol"}, Provisioner: driver.Name, VolumeBindingMode: &wffc,
			AllowVolumeExpansion: &allowExpansion},
		&v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: o.capacityOwner, Namespace: o.namespace, OwnerReferences: []metav1.OwnerReference{daemonSet}}},
	)
	// The fake API server does not make up names for generateName.
	kube.PrependReactor("create", "csistoragecapacities", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*storagev1.CSIStorageCapacity)
		o.Name = o.GenerateName + "1"
		return false, nil, nil
	})
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2), ktesting.BufferLogs(false)))
	ctx, cancel := context.WithCancel(klog.NewContext(t.Context(), logger))
	defer cancel()
	a, err := newAgent(ctx, o, kube, fixtures.SnapshotClientset())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.run(ctx) }()

	base := "http://" + o.metricsAddress
	poll(t, "/healthz", func(context.Context) (bool, error) {
		code, _ := get(t, base+"/healthz")
		return code == http.StatusOK, nil
	})

	regSocket := registration.SocketPath(o.kubeletRoot, driver.Name)
	conn, err := grpc.NewClient("unix://"+regSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	reg := registerapi.NewRegistrationClient(conn)
	info, err := reg.GetInfo(ctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil || info.Endpoint != o.csiSocket() || info.Name != driver.Name {
		t.Fatalf("GetInfo = %+v, %v; want endpoint %s", info, err, o.csiSocket())
	}
	// Live but not ready until kubelet says it registered the driver.
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not registered") {
		t.Errorf("/readyz before kubelet registered the driver: %d %q, want 503 naming the registration", code, body)
	}
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	poll(t, "/readyz", func(context.Context) (bool, error) {
		code, _ := get(t, base+"/readyz")
		return code == http.StatusOK, nil
	})

	// The scheduler learns what the node can hold for the class: all of
	// its capacity, on this node; the objects go with the agents'
	// DaemonSet.
	class := "stickyvol"
	waitForCapacity := func(left string) {
		poll(t, "published capacity "+left, func(ctx context.Context) (bool, error) {
			list, err := kube.StorageV1().CSIStorageCapacities("stickyvol").List(ctx, metav1.ListOptions{})
			if err != nil || len(list.Items) != 1 {
				return false, err
			}
			c, want := list.Items[0], resource.MustParse(left)
			return c.StorageClassName == class && c.NodeTopology.MatchLabels[driver.TopologyKey] == "node-a" &&
				c.Capacity.Cmp(want) == 0 && c.MaximumVolumeSize.Cmp(want) == 0 &&
				len(c.OwnerReferences) == 1 && c.OwnerReferences[0].UID == daemonSet.UID, nil
		})
	}
	waitForCapacity("1Gi")

	claim := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data-web-0", Namespace: "default", UID: types.UID("uid-1"),
			Annotations: map[string]string{
				"volume.kubernetes.io/storage-provisioner": driver.Name,
				"volume.kubernetes.io/selected-node":       "node-a",
			}},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("256Mi")}},
		},
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims("default").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the PV", func(ctx context.Context) (bool, error) {
		_, err := kube.CoreV1().PersistentVolumes().Get(ctx, "pvc-uid-1", metav1.GetOptions{})
		return err == nil, nil
	})
	if _, err := os.Stat(filepath.Join(o.dataRoot, "volumes", "pvc-uid-1")); err != nil {
		t.Errorf("volume directory: %v", err)
	}
	// The driver tells the publisher of the new volume: what is left is
	// published within seconds, not at the next resync.
	waitForCapacity("768Mi")
	growClaim(t, kube, "default", "data-web-0", "pvc-uid-1")
	// And of the grown one (after the publisher's least interval).
	waitForCapacity("512Mi")

	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{
		"stickyvol_capacity_bytes 1.073741824e+09",
		"stickyvol_allocated_bytes 5.36870912e+08", // 256Mi, grown to 512Mi
		"stickyvol_volumes 1",
		"stickyvol_unavailable_volumes 1",
		"stickyvol_orphan_volumes 0",
		"stickyvol_missing_volumes 0",
		`stickyvol_storage_capacity_writes_total{operation="create"} 1`,
		`stickyvol_storage_capacity_writes_total{operation="update"} 2`,
		`controller_persistentvolumeclaim_provision_total{class="stickyvol",source=""} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The reconciler has checked at start: nothing left over, nothing
	// missing; the set-aside volume is listed with the driver's reason.
	var doc agentapi.NodeVolumes
	poll(t, "a checked /volumes", func(context.Context) (bool, error) {
		code, body := get(t, base+agentapi.Path)
		if code != http.StatusOK {
			return false, fmt.Errorf("GET /volumes: %d %s", code, body)
		}
		doc = agentapi.NodeVolumes{}
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			return false, err
		}
		return !doc.Checked.IsZero(), nil
	})
	if doc.Node != "node-a" || len(doc.Orphans) != 0 || len(doc.Missing) != 0 || len(doc.Unavailable) != 1 ||
		doc.Unavailable[0].VolumeID != "pvc-bad" || !strings.Contains(doc.Unavailable[0].Reason, "set aside") {
		t.Errorf("/volumes: %+v; want node-a with only pvc-bad unavailable", doc)
	}
	// --profiling: Go's profiles, for go tool pprof.
	if code, body := get(t, base+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("/debug/pprof/goroutine with --profiling: %d %.80q", code, body)
	}
	// The cluster-wide caches are the claims, PVs and classes the agent's
	// parts read, and nothing else: no Nodes, CSINodes or other nodes'
	// capacity (the duties that read those are the controller's).
	var cached []string
	for typ := range a.informers.WaitForCacheSync(ctx.Done()) {
		cached = append(cached, typ.String())
	}
	slices.Sort(cached)
	if want := []string{"*v1.PersistentVolume", "*v1.PersistentVolumeClaim", "*v1.StorageClass"}; !slices.Equal(cached, want) {
		t.Errorf("the agent caches %v cluster-wide, want %v", cached, want)
	}
	// The cluster duties are the controller's: an agent never campaigns.
	if leases, err := kube.CoordinationV1().Leases("").List(ctx, metav1.ListOptions{}); err != nil || len(leases.Items) != 0 {
		t.Errorf("the agent touched Leases: %v, %v", leases, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop")
	}
	for _, p := range []string{regSocket, o.csiSocket()} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after shutdown: %v", p, err)
		}
	}
}

func TestNodeOptionsValidate(t *testing.T) {
	valid := func() *nodeOptions {
		return &nodeOptions{nodeName: "n", kubeletRoot: "/var/lib/kubelet", dataRoot: "/var/lib/stickyvol", qps: 1, burst: 1, threadiness: 1,
			operationTimeout: time.Second, reconcilePeriod: time.Minute, backend: driver.BackendAuto}
	}
	for _, tc := range []struct {
		name   string
		change func(*nodeOptions)
		want   string
	}{
		{"valid", func(*nodeOptions) {}, ""},
		{"no node name", func(o *nodeOptions) { o.nodeName = "" }, "--node-name is required"},
		{"relative kubelet root", func(o *nodeOptions) { o.kubeletRoot = "kubelet" }, "--kubelet-root"},
		{"bad capacity", func(o *nodeOptions) { o.capacity = "ten gigs" }, "--capacity"},
		{"zero capacity", func(o *nodeOptions) { o.capacity = "0" }, "--capacity"},
		{"zero qps", func(o *nodeOptions) { o.qps = 0 }, "must be positive"},
		{"orphans deleted before they are orphans", func(o *nodeOptions) { o.deleteOrphansAfter = time.Minute }, "--delete-orphans-after"},
		{"unknown backend", func(o *nodeOptions) { o.backend = "zfs" }, "--backend"},
		{"orphans deleted after an hour", func(o *nodeOptions) { o.deleteOrphansAfter = time.Hour }, ""},
		{"capacity published nowhere", func(o *nodeOptions) { o.publishCapacity, o.namespace = true, "" }, "--namespace"},
		{"capacity not published", func(o *nodeOptions) { o.publishCapacity, o.namespace = false, "" }, ""},
		{"profiles served", func(o *nodeOptions) { o.profiling, o.metricsAddress = true, ":9808" }, ""},
		{"profiles served nowhere", func(o *nodeOptions) { o.profiling, o.metricsAddress = true, "" }, "--profiling needs --metrics-address"},
		{"pools", func(o *nodeOptions) {
			o.pools = []string{"fast=/mnt/nvme", "big=/mnt/hdd/stickyvol,backend=directory,capacity=2Ti"}
		}, ""},
		{"pool without a path", func(o *nodeOptions) { o.pools = []string{"fast"} }, "must be NAME=PATH"},
		{"pool with an empty path", func(o *nodeOptions) { o.pools = []string{"fast="} }, `data root "" must be an absolute`},
		{"pool with a relative path", func(o *nodeOptions) { o.pools = []string{"fast=mnt/nvme"} }, `data root "mnt/nvme" must be an absolute`},
		{"pool with a bad name", func(o *nodeOptions) { o.pools = []string{"Fast=/mnt/nvme"} }, `pool name "Fast" is not valid`},
		{"pool named default", func(o *nodeOptions) { o.pools = []string{"default=/mnt/nvme"} }, "given twice"},
		{"pool twice", func(o *nodeOptions) { o.pools = []string{"a=/mnt/a", "a=/mnt/b"} }, "given twice"},
		{"pool on the data root", func(o *nodeOptions) { o.pools = []string{"a=/var/lib/stickyvol/"} }, "data root /var/lib/stickyvol of pool default"},
		{"pool inside another", func(o *nodeOptions) { o.pools = []string{"a=/mnt/a", "b=/mnt/a/b"} }, "inside the data root /mnt/a of pool a"},
		{"pool inside the kubelet root", func(o *nodeOptions) { o.pools = []string{"a=/var/lib/kubelet/a"} }, "pool a: data root /var/lib/kubelet/a is, holds or is inside --kubelet-root"},
		{"pool on the kubelet root", func(o *nodeOptions) { o.pools = []string{"a=/var/lib/kubelet"} }, "--kubelet-root"},
		{"data root holding the kubelet root", func(o *nodeOptions) { o.dataRoot = "/var/lib" }, "pool default: data root /var/lib is, holds or is inside --kubelet-root"},
		{"pool with a bad capacity", func(o *nodeOptions) { o.pools = []string{"a=/mnt/a,capacity=lots"} }, `capacity "lots" must be a positive quantity`},
		{"pool with a bad backend", func(o *nodeOptions) { o.pools = []string{"a=/mnt/a,backend=zfs"} }, `pool a: unknown backend "zfs"`},
		{"pool with an unknown option", func(o *nodeOptions) { o.pools = []string{"a=/mnt/a,fast=yes"} }, `unknown option "fast=yes"`},
	} {
		o := valid()
		tc.change(o)
		err := o.validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	o := valid()
	o.capacity = "10Gi"
	if got := o.driverConfig().Capacity; got != 10<<30 {
		t.Errorf("--capacity 10Gi gives %d bytes", got)
	}
	o.pools = []string{"fast=/mnt/nvme/", "big=/mnt/hdd,backend=directory,capacity=1Ti"}
	want := []driver.Pool{
		{Name: "fast", DataRoot: "/mnt/nvme"},
		{Name: "big", DataRoot: "/mnt/hdd", Backend: driver.BackendDirectory, Capacity: 1 << 40},
	}
	if got := o.driverConfig().Pools; !slices.Equal(got, want) {
		t.Errorf("--pool flags give %+v, want %+v", got, want)
	}
}

// --pool is repeatable and keeps the commas of its options (a string
// slice flag would split them).
func TestPoolFlagRepeatable(t *testing.T) {
	sub, _, err := newRootCommand("stickyvol", environment{}).Find([]string{"node"})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.ParseFlags([]string{"--pool", "fast=/mnt/nvme,capacity=1Ti,backend=btrfs", "--pool=big=/mnt/hdd"}); err != nil {
		t.Fatal(err)
	}
	got, err := sub.Flags().GetStringArray("pool")
	if want := []string{"fast=/mnt/nvme,capacity=1Ti,backend=btrfs", "big=/mnt/hdd"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("--pool twice gives %q, %v; want %q", got, err, want)
	}
}

func TestFlagsDefaultFromEnvironment(t *testing.T) {
	cmd := newRootCommand("stickyvol", environment{nodeName: "from-env", podNamespace: "ns-from-env", podName: "pod-from-env"})
	for _, tc := range []struct{ command, flag, want string }{
		{"node", "node-name", "from-env"},
		{"node", "namespace", "ns-from-env"},
		{"node", "capacity-owner", "pod-from-env"},
		{"controller", "namespace", "ns-from-env"},
		{"controller", "identity", "pod-from-env"},
	} {
		sub, _, err := cmd.Find([]string{tc.command})
		if err != nil {
			t.Fatal(err)
		}
		if got := sub.Flags().Lookup(tc.flag).DefValue; got != tc.want {
			t.Errorf("%s --%s defaults to %q, want %q", tc.command, tc.flag, got, tc.want)
		}
	}
}

// A volume whose record was set aside gets a Warning event on its PV, which
// is what `kubectl describe pv` shows the user whose pod cannot mount it.
func TestReportUnavailable(t *testing.T) {
	kube := fake.NewClientset(&v1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1"}})
	reason := "its record was corrupt and is set aside as /var/lib/stickyvol/meta/pvc-1.json.corrupt-1"
	reportUnavailable(t.Context(), kube, map[string]string{"pvc-1": reason, "pvc-gone": "no PV"})
	poll(t, "the VolumeUnavailable event", func(ctx context.Context) (bool, error) {
		events, err := kube.CoreV1().Events("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Name == "pvc-1" && e.Type == v1.EventTypeWarning && e.Reason == "VolumeUnavailable" &&
				strings.Contains(e.Message, reason) {
				return true, nil
			}
		}
		return false, nil
	})
}
