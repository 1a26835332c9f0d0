package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	logsapi "k8s.io/component-base/logs/api/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/stickyvol/stickyvol/driver"
)

func statusClaim(ns, name, class, volume, node string) *v1.PersistentVolumeClaim {
	c := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "/" + name),
			CreationTimestamp: metav1.NewTime(statusNow.Add(-5 * time.Minute))},
		Spec: v1.PersistentVolumeClaimSpec{StorageClassName: &class, VolumeName: volume,
			AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			Resources:   v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")}}},
		Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimPending},
	}
	if volume != "" {
		c.Status.Phase = v1.ClaimBound
	}
	if node != "" {
		c.Annotations = map[string]string{"volume.kubernetes.io/selected-node": node}
	}
	return c
}

func statusPV(name, drv, node string) *v1.PersistentVolume {
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: resource.MustParse("2Gi")},
			PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: name,
				VolumeAttributes: map[string]string{driver.VolumeContextBackend: "btrfs", driver.VolumeContextPool: "default"}}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: driver.TopologyKey, Operator: v1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
	}
}

// statusFixture is a cluster with claims in every state status tells apart.
func statusFixture() []runtime.Object {
	return []runtime.Object{
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "stickyvol"}, Provisioner: driver.Name},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "standard"}, Provisioner: "other.example.com"},
		statusPV("pvc-1", driver.Name, "node-a"),
		statusPV("pvc-2", driver.Name, "node-b"),
		statusPV("pvc-other", "other.example.com", "node-a"),
		statusClaim("web", "data-web-0", "stickyvol", "pvc-1", "node-a"),
		statusClaim("web", "data-web-1", "stickyvol", "pvc-2", "node-b"),
		statusClaim("web", "data-web-10", "stickyvol", "", "node-a"),
		statusClaim("web", "data-web-2", "stickyvol", "", "node-a"),
		prebound(statusPV("pvc-3", driver.Name, "node-a"), "web", "data-web-3"),
		statusClaim("web", "data-web-3", "stickyvol", "", "node-a"),
		statusClaim("db", "other", "standard", "pvc-other", "node-a"),
	}
}

// fixtureUsage is kubelet's answer: node-a measured data-web-0, node-b
// cannot be asked.
func fixtureUsage(_ context.Context, node string) (map[claimKey]uint64, error) {
	if node == "node-b" {
		return nil, errors.New("forbidden: nodes/proxy")
	}
	return claimUsage(statsv1alpha1.Summary{Pods: []statsv1alpha1.PodStats{{VolumeStats: []statsv1alpha1.VolumeStats{
		{Name: "data", PVCRef: &statsv1alpha1.PVCReference{Namespace: "web", Name: "data-web-0"},
			FsStats: statsv1alpha1.FsStats{UsedBytes: ptr(uint64(300 << 20))}},
	}}}}), nil
}

// fixtureRows lists the fixture as `stickyvol status` does.
func fixtureRows(t *testing.T) ([]volumeStatus, []string) {
	t.Helper()
	objs, err := listStatusObjects(t.Context(), fake.NewClientset(statusFixture()...), "")
	if err != nil {
		t.Fatal(err)
	}
	rows := statusRows(objs, "/var/lib/stickyvol")
	return rows, fillUsage(t.Context(), rows, fixtureUsage)
}

func printed(t *testing.T, format string, rows []volumeStatus) string {
	t.Helper()
	var out bytes.Buffer
	if err := newStatusPrinter(&out, format, statusNow).print(rows, nil, true); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

var statusNow = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func TestStatus(t *testing.T) {
	rows, warnings := fixtureRows(t)
	want := `NAMESPACE  CLAIM        STATUS   PV     NODE    PATH                              CAPACITY         USED
web        data-web-0   Bound    pvc-1  node-a  /var/lib/stickyvol/volumes/pvc-1  2Gi              300Mi
web        data-web-1   Bound    pvc-2  node-b  /var/lib/stickyvol/volumes/pvc-2  2Gi              -
web        data-web-2   Pending  -      node-a  -                                 1Gi (requested)  -
web        data-web-3   Pending  pvc-3  node-a  /var/lib/stickyvol/volumes/pvc-3  2Gi              -
web        data-web-10  Pending  -      node-a  -                                 1Gi (requested)  -
`
	if got := printed(t, "", rows); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "node-b") {
		t.Errorf("warnings %v, want one about node-b", warnings)
	}
}

func TestStatusWide(t *testing.T) {
	rows, _ := fixtureRows(t)
	got := strings.Split(printed(t, "wide", []volumeStatus{rows[0], rows[2]}), "\n")
	for i, want := range []string{
		"NAMESPACE  CLAIM       STATUS   PV     NODE    PATH                              CAPACITY         USED   POOL     BACKEND  CLASS      ACCESS MODES   RECLAIM  AGE",
		"web        data-web-0  Bound    pvc-1  node-a  /var/lib/stickyvol/volumes/pvc-1  2Gi              300Mi  default  btrfs    stickyvol  ReadWriteOnce  Delete   5m",
		"web        data-web-2  Pending  -      node-a  -                                 1Gi (requested)  -      -        -        stickyvol  ReadWriteOnce  -        5m",
	} {
		if i >= len(got) || got[i] != want {
			t.Errorf("line %d:\n%q\nwant\n%q", i, got[i], want)
		}
	}
}

// TestStatusJSONAndYAML checks that both documents carry the same rows, with
// exact bytes for what is measured and empty fields left out.
func TestStatusJSONAndYAML(t *testing.T) {
	rows, _ := fixtureRows(t)
	var fromJSON, fromYAML statusList
	if err := json.Unmarshal([]byte(printed(t, "json", rows)), &fromJSON); err != nil {
		t.Fatal(err)
	}
	y := printed(t, "yaml", rows)
	if err := yaml.UnmarshalStrict([]byte(strings.TrimPrefix(y, "---\n")), &fromYAML); err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	if diff := cmp.Diff(fromJSON, fromYAML); diff != "" {
		t.Errorf("json and yaml differ (-json +yaml):\n%s", diff)
	}
	if diff := cmp.Diff(statusList{Items: rows}, fromJSON); diff != "" {
		t.Errorf("json round trip (-rows +json):\n%s", diff)
	}
	first := fromJSON.Items[0]
	if first.Claim != "data-web-0" || first.UsedBytes == nil || *first.UsedBytes != 300<<20 || first.Path != "/var/lib/stickyvol/volumes/pvc-1" {
		t.Errorf("first item %+v", first)
	}
	pending := fromJSON.Items[2]
	if pending.PV != "" || pending.Requested != "1Gi" || pending.Node != "node-a" || pending.UsedBytes != nil {
		t.Errorf("pending item %+v", pending)
	}
	empty := printed(t, "json", nil)
	if !strings.Contains(empty, `"items": []`) {
		t.Errorf("empty list printed as %s", empty)
	}
}

// TestStatusReadsKUBECONFIG runs the command as a user would after
// `eval "$(make -s cluster-env)"`: no --kubeconfig, only $KUBECONFIG.
func TestStatusReadsKUBECONFIG(t *testing.T) {
	api := fakeAPIServer(t, statusFixture())
	dir := useKubeconfig(t, api.URL)

	out, err := runCommand(t, "stickyvol", "status", "--no-usage", "--agents=false", "-n", "web")
	if err != nil {
		t.Fatalf("status with only $KUBECONFIG: %v\n%s", err, out)
	}
	if !strings.Contains(out, "data-web-0   Bound    pvc-1") {
		t.Errorf("output does not list the cluster's claims:\n%s", out)
	}

	t.Setenv("KUBECONFIG", filepath.Join(dir, "missing"))
	out, err = runCommand(t, "stickyvol", "status", "--no-usage")
	if err == nil || !strings.Contains(out, "$KUBECONFIG") {
		t.Errorf("with no configuration: %v\n%s; want an error that says what to set", err, out)
	}
}

func TestStatusAsKubectlPlugin(t *testing.T) {
	if got := commandName("/usr/local/bin/kubectl-stickyvol"); got != "kubectl stickyvol" {
		t.Errorf("commandName(kubectl-stickyvol) = %q", got)
	}
	if got := commandName("/usr/bin/stickyvol"); got != "stickyvol" {
		t.Errorf("commandName(stickyvol) = %q", got)
	}
	out, err := runCommand(t, "kubectl stickyvol", "status", "--help")
	if err != nil || !strings.Contains(out, "kubectl stickyvol status [flags]") {
		t.Errorf("plugin help: %v\n%s", err, out)
	}
	if out, err := runCommand(t, "stickyvol", "status", "-o", "table"); err == nil || !strings.Contains(out, "wide, json, yaml") {
		t.Errorf("-o table: %v\n%s", err, out)
	}
}

// TestStatusWatch: the whole list with the agents' findings, then only the
// claims that change; the agents are asked once.
func TestStatusWatch(t *testing.T) {
	kube := fake.NewClientset(append(statusFixture(), agentPod("stickyvol-node-a", "node-a", v1.PodRunning, true))...)
	asked := make(chan string, 10)
	kube.PrependProxyReactor("pods", func(action clienttesting.Action) (bool, rest.ResponseWrapper, error) {
		p := action.(clienttesting.ProxyGetAction)
		asked <- p.GetScheme() + ":" + p.GetName() + ":" + p.GetPort() + p.GetPath()
		return true, agentResponse{nodeAAgent(time.Now())}, nil
	})
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- watchStatus(ctx, kube, &statusOptions{namespace: "web", dataRoot: "/d", noUsage: true,
			agents: true, agentNamespace: "stickyvol"}, out, io.Discard)
	}()
	waitFor(t, out, "node-a pvc-bad unavailable its record was corrupt")
	if n := strings.Count(out.String(), "\n"); n != 11 {
		t.Errorf("first list has %d lines, want header and 5 claims, a blank line, header and 3 findings:\n%s", n, out)
	}

	// The PV controller binds data-web-3 to the PV made for it.
	claim, err := kube.CoreV1().PersistentVolumeClaims("web").Get(ctx, "data-web-3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim.Spec.VolumeName, claim.Status.Phase = "pvc-3", v1.ClaimBound
	if _, err := kube.CoreV1().PersistentVolumeClaims("web").Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "data-web-3   Bound")
	if err := kube.CoreV1().PersistentVolumeClaims("web").Delete(ctx, "data-web-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "data-web-2   Deleted")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("watch ended with %v", err)
	}
	if got := strings.Count(out.String(), "NAMESPACE"); got != 1 {
		t.Errorf("header printed %d times:\n%s", got, out)
	}
	if got := strings.Count(out.String(), "data-web-0"); got != 1 {
		t.Errorf("unchanged data-web-0 printed %d times:\n%s", got, out)
	}
	if got := <-asked; got != "http:stickyvol-node-a:9808/volumes" {
		t.Errorf("asked the agent at %s", got)
	}
	if len(asked) != 0 || strings.Count(out.String(), "PROBLEM") != 1 {
		t.Errorf("the agents were asked again, or their findings printed again:\n%s", out)
	}
}

func ptr[T any](v T) *T { return &v }

// prebound makes pv name the claim, as a PV the provisioner made but the PV
// controller has not bound yet.
func prebound(pv *v1.PersistentVolume, ns, name string) *v1.PersistentVolume {
	pv.Spec.ClaimRef = &v1.ObjectReference{Namespace: ns, Name: name, UID: types.UID(ns + "/" + name)}
	return pv
}

// runCommand runs the command line as main would, under the given program
// name, and returns what it printed.
func runCommand(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	// Each run applies the same logging configuration again.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	cmd := newRootCommand(name, environment{})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

// useKubeconfig points $KUBECONFIG, and only it, at server, as a user
// would after `eval "$(make -s cluster-env)"`, and returns the directory
// of the kubeconfig.
func useKubeconfig(t *testing.T, server string) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("HOME", dir) // no ~/.kube/config to fall back on
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	path := filepath.Join(dir, "config")
	writeKubeconfig(t, path, server)
	t.Setenv("KUBECONFIG", path)
	return dir
}

// fakeAPIServer answers the three lists status makes, in JSON, from objs.
func fakeAPIServer(t *testing.T, objs []runtime.Object) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(fakeAPI(objs))
	t.Cleanup(srv.Close)
	return srv
}

// fakeAPI is fakeAPIServer's handler, for a test to add to.
func fakeAPI(objs []runtime.Object) *http.ServeMux {
	var classes storagev1.StorageClassList
	var pvs v1.PersistentVolumeList
	claims := map[string]*v1.PersistentVolumeClaimList{"": {}}
	for _, o := range objs {
		switch o := o.(type) {
		case *storagev1.StorageClass:
			classes.Items = append(classes.Items, *o)
		case *v1.PersistentVolume:
			pvs.Items = append(pvs.Items, *o)
		case *v1.PersistentVolumeClaim:
			if claims[o.Namespace] == nil {
				claims[o.Namespace] = &v1.PersistentVolumeClaimList{}
			}
			claims[o.Namespace].Items = append(claims[o.Namespace].Items, *o)
			claims[""].Items = append(claims[""].Items, *o)
		}
	}
	classes.TypeMeta = metav1.TypeMeta{APIVersion: "storage.k8s.io/v1", Kind: "StorageClassList"}
	pvs.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeList"}
	mux := http.NewServeMux()
	serve := func(path string, list any) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(list)
		})
	}
	serve("/apis/storage.k8s.io/v1/storageclasses", &classes)
	serve("/api/v1/persistentvolumes", &pvs)
	for ns, list := range claims {
		list.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaimList"}
		if ns == "" {
			serve("/api/v1/persistentvolumeclaims", list)
		} else {
			serve("/api/v1/namespaces/"+ns+"/persistentvolumeclaims", list)
		}
	}
	return mux
}

func writeKubeconfig(t *testing.T, path, server string) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer that a command writes while a test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until a line of out holds want, comparing words: rows that
// --watch prints after the list are aligned on their own, as kubectl's.
func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	want = strings.Join(strings.Fields(want), " ")
	for !strings.Contains(strings.Join(strings.Fields(out.String()), " "), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in:\n%s", want, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A volume in a pool other than the default one is shown where the driver
// says it lies, not under --data-root.
func TestStatusPoolPath(t *testing.T) {
	pv := statusPV("pvc-9", driver.Name, "node-a")
	pv.Spec.CSI.VolumeAttributes = map[string]string{
		driver.VolumeContextPool: "fast", driver.VolumeContextPath: "/mnt/fast/volumes/pvc-9"}
	class := "fast"
	claim := &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "data-web-9"},
		Spec: v1.PersistentVolumeClaimSpec{StorageClassName: &class, VolumeName: "pvc-9"}}
	s := claimStatus(claim, pv, "/var/lib/stickyvol")
	if s.Path != "/mnt/fast/volumes/pvc-9" || s.Pool != "fast" {
		t.Errorf("status path %q pool %q, want the driver's /mnt/fast/volumes/pvc-9 in pool fast", s.Path, s.Pool)
	}
}
