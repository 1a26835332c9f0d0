package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/stickyvol/stickyvol/internal/agentapi"
	"github.com/stickyvol/stickyvol/provisioner"
)

// agentPod is a pod of the stickyvol-node DaemonSet on node.
func agentPod(name, node string, phase v1.PodPhase, ready bool) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "stickyvol", Name: name,
			Labels: map[string]string{"app.kubernetes.io/name": "stickyvol-node"}},
		Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "stickyvol",
			Ports: []v1.ContainerPort{{Name: "http-metrics", ContainerPort: 9808}}}}},
		Status: v1.PodStatus{Phase: phase},
	}
	if ready {
		p.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue}}
	}
	return p
}

// nodeAFindings is what the reconciler of node-a found, at now.
func nodeAFindings(now time.Time) provisioner.Findings {
	return provisioner.Findings{
		Checked: now.Add(-time.Minute),
		Orphans: []provisioner.Orphan{{VolumeID: "pvc-leaked", Since: now.Add(-25 * time.Hour)}},
		Missing: []provisioner.MissingVolume{{PV: "pvc-wiped", VolumeID: "pvc-wiped",
			Claim: types.NamespacedName{Namespace: "web", Name: "data-web-9"}}},
	}
}

// nodeAAgent is node-a's agent as it serves /volumes: the real handler.
func nodeAAgent(now time.Time) http.Handler {
	return volumesHandler("node-a", func() provisioner.Findings { return nodeAFindings(now) },
		func() map[string]string { return map[string]string{"pvc-bad": "its record was corrupt"} })
}

// forbidden answers as the API server does when RBAC says no.
func forbidden(w http.ResponseWriter, resource string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status: metav1.StatusFailure, Reason: metav1.StatusReasonForbidden, Code: http.StatusForbidden,
		Message: `User "dev" cannot get resource "` + resource + `" in the namespace "stickyvol"`})
}

// agentsAPI is the fixture's API server with the agents' pods in namespace
// stickyvol, listed only by the agents' label, and each pod's proxy served
// by proxies (keyed "scheme:pod:port", as the API server's URL has it).
func agentsAPI(t *testing.T, pods []*v1.Pod, proxies map[string]http.Handler) *httptest.Server {
	t.Helper()
	mux := fakeAPI(statusFixture())
	mux.HandleFunc("GET /api/v1/namespaces/stickyvol/pods", func(w http.ResponseWriter, r *http.Request) {
		list := v1.PodList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"}}
		if r.URL.Query().Get("labelSelector") == agentapi.PodSelector {
			for _, p := range pods {
				list.Items = append(list.Items, *p)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&list)
	})
	mux.HandleFunc("GET /api/v1/namespaces/stickyvol/pods/{target}/proxy/volumes", func(w http.ResponseWriter, r *http.Request) {
		h, ok := proxies[r.PathValue("target")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestStatusAgents runs `stickyvol status` against an API server whose pod
// proxy reaches node-a's agent, refuses node-b's and cannot reach node-c's
// pod, which is not running: the claims and node-a's findings are printed,
// node-b and node-c get a warning line each, and the command succeeds.
func TestStatusAgents(t *testing.T) {
	stopping := agentPod("stickyvol-node-old", "node-a", v1.PodRunning, false)
	stopping.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	api := agentsAPI(t,
		[]*v1.Pod{
			stopping,
			agentPod("stickyvol-node-a", "node-a", v1.PodRunning, true),
			agentPod("stickyvol-node-b", "node-b", v1.PodRunning, true),
			agentPod("stickyvol-node-c", "node-c", v1.PodPending, false),
		},
		map[string]http.Handler{
			"http:stickyvol-node-a:9808": nodeAAgent(time.Now()),
			"http:stickyvol-node-b:9808": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				forbidden(w, "pods/proxy")
			}),
		})
	useKubeconfig(t, api.URL)

	out, err := runCommand(t, "stickyvol", "status", "--no-usage", "-n", "web")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	claims := strings.Index(out, "data-web-10")
	section := strings.Index(out, "NODE    VOLUME      PROBLEM      DETAIL")
	if claims < 0 || section < claims {
		t.Fatalf("want the claims, then the agents' findings:\n%s", out)
	}
	for _, want := range []string{
		"node-a  pvc-leaked  orphan       no PV or claim for 25h",
		"node-a  pvc-wiped   missing      PV pvc-wiped, claim web/data-web-9",
		"node-a  pvc-bad     unavailable  its record was corrupt",
		`warning: no volumes from the agent of node node-b: User "dev" cannot get resource "pods/proxy" in the namespace "stickyvol"`,
		"warning: no volumes from the agent of node node-c: agent pod stickyvol-node-c is Pending, not running",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("no line %q in:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "warning:"); n != 2 {
		t.Errorf("%d warnings, want one for node-b and one for node-c:\n%s", n, out)
	}

	out, err = runCommand(t, "stickyvol", "status", "--no-usage", "--agents=false", "-n", "web")
	if err != nil || strings.Contains(out, "PROBLEM") || strings.Contains(out, "warning") {
		t.Errorf("--agents=false: %v\n%s", err, out)
	}
}

// TestStatusAgentsNotListed: without the right to list the agents' pods,
// status says so once and prints the claims.
func TestStatusAgentsNotListed(t *testing.T) {
	mux := fakeAPI(statusFixture())
	mux.HandleFunc("GET /api/v1/namespaces/stickyvol/pods", func(w http.ResponseWriter, _ *http.Request) {
		forbidden(w, "pods")
	})
	api := httptest.NewServer(mux)
	defer api.Close()
	useKubeconfig(t, api.URL)
	out, err := runCommand(t, "stickyvol", "status", "--no-usage", "-n", "web")
	if err != nil || !strings.Contains(out, "data-web-0") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	want := "warning: no orphan, missing or unavailable volumes listed: listing the agents' pods in namespace stickyvol: " +
		`User "dev" cannot get resource "pods" in the namespace "stickyvol"` + "\n"
	if !strings.Contains(out, want) || strings.Count(out, "warning:") != 1 {
		t.Errorf("want the one line %q in:\n%s", want, out)
	}
}

// TestAgentFindingsTimeout: a node whose agent does not answer costs the
// timeout, not the others' findings.
func TestAgentFindingsTimeout(t *testing.T) {
	api := agentsAPI(t,
		[]*v1.Pod{
			agentPod("stickyvol-node-a", "node-a", v1.PodRunning, true),
			agentPod("stickyvol-node-b", "node-b", v1.PodRunning, true),
		},
		map[string]http.Handler{
			"http:stickyvol-node-a:9808": nodeAAgent(time.Now()),
			"http:stickyvol-node-b:9808": http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
			}),
		})
	kube, err := kubeClient(&rest.Config{Host: api.URL}, 20, 40)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	nodes, err := agentFindings(t.Context(), kube, "stickyvol", []string{"node-a", "node-b", "node-z"}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s with a timeout of 200ms", took)
	}
	if len(nodes) != 3 || nodes[0].Node != "node-a" || nodes[1].Node != "node-b" || nodes[2].Node != "node-z" {
		t.Fatalf("nodes %+v, want node-a, node-b, node-z", nodes)
	}
	if nodes[0].Error != "" || len(nodes[0].Orphans) != 1 || len(nodes[0].Missing) != 1 || len(nodes[0].Unavailable) != 1 {
		t.Errorf("node-a: %+v, want its findings", nodes[0])
	}
	if !strings.Contains(nodes[1].Error, "context deadline exceeded") {
		t.Errorf("node-b: %+v, want a timeout", nodes[1])
	}
	if nodes[2].Error != "no agent pod on this node" {
		t.Errorf("node-z, where claims are and no agent: %+v", nodes[2])
	}
}

// TestAgentFindingsOtherVersions: an agent that serves another version of
// the document is not misread, and one that serves none yet is named so.
func TestAgentFindingsOtherVersions(t *testing.T) {
	api := agentsAPI(t, []*v1.Pod{
		agentPod("stickyvol-node-a", "node-a", v1.PodRunning, true),
		agentPod("stickyvol-node-b", "node-b", v1.PodRunning, true),
	}, map[string]http.Handler{"http:stickyvol-node-a:9808": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"apiVersion":"stickyvol.dev/v2","kind":"NodeVolumes","node":"node-a"}`)
	})})
	kube, err := kubeClient(&rest.Config{Host: api.URL}, 20, 40)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := agentFindings(t.Context(), kube, "stickyvol", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"the agent serves stickyvol.dev/v2 NodeVolumes; this stickyvol status reads stickyvol.dev/v1 NodeVolumes",
		"the agent serves no /volumes (older than this stickyvol status?)",
	}
	if len(nodes) != 2 || nodes[0].Error != want[0] || !strings.HasSuffix(nodes[1].Error, want[1]) {
		t.Errorf("nodes %+v, want node-a and node-b with %q", nodes, want)
	}
}

// fixtureFindings are two clean nodes, one with findings, one that could
// not be asked and one not checked yet.
func fixtureFindings() []nodeFindings {
	at := func(d time.Duration) metav1.Time { return metav1.NewTime(statusNow.Add(d)) }
	return []nodeFindings{
		{Node: "node-a", Agent: "stickyvol-node-a", Checked: at(-time.Minute),
			Orphans:     []agentapi.Orphan{{VolumeID: "pvc-leaked", Since: at(-25 * time.Hour)}},
			Missing:     []agentapi.Missing{{PV: "pvc-static", VolumeID: "by-hand"}},
			Unavailable: []agentapi.Unavailable{}},
		{Node: "node-b", Agent: "stickyvol-node-b", Checked: at(-time.Minute),
			Orphans: []agentapi.Orphan{}, Missing: []agentapi.Missing{}, Unavailable: []agentapi.Unavailable{}},
		{Node: "node-c", Agent: "stickyvol-node-c", Error: "agent pod stickyvol-node-c is Pending, not running"},
		{Node: "node-d", Agent: "stickyvol-node-d", Orphans: []agentapi.Orphan{}, Missing: []agentapi.Missing{},
			Unavailable: []agentapi.Unavailable{{VolumeID: "pvc-bad", Reason: "its record was corrupt"}}},
	}
}

func TestStatusFindingsPrinted(t *testing.T) {
	rows, _ := fixtureRows(t)
	var out bytes.Buffer
	if err := newStatusPrinter(&out, "", statusNow).print(rows[:1], fixtureFindings(), true); err != nil {
		t.Fatal(err)
	}
	want := `NAMESPACE  CLAIM       STATUS  PV     NODE    PATH                              CAPACITY  USED
web        data-web-0  Bound   pvc-1  node-a  /var/lib/stickyvol/volumes/pvc-1  2Gi       300Mi

NODE    VOLUME      PROBLEM      DETAIL
node-a  pvc-leaked  orphan       no PV or claim for 25h
node-a  by-hand     missing      PV pvc-static, no claim
node-d  pvc-bad     unavailable  its record was corrupt
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	if got := findingsWarnings(fixtureFindings()); !cmp.Equal(got, []string{
		"no volumes from the agent of node node-c: agent pod stickyvol-node-c is Pending, not running",
		"the agent of node node-d has not compared its volumes with the PVs yet: orphans and missing volumes unknown",
	}) {
		t.Errorf("warnings %q", got)
	}

	// Clean nodes: no section at all.
	out.Reset()
	if err := newStatusPrinter(&out, "", statusNow).print(rows[:1], fixtureFindings()[1:3], true); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "PROBLEM") {
		t.Errorf("a section for clean nodes:\n%s", out.String())
	}
}

// TestStatusFindingsJSONAndYAML: both documents carry every node under
// "nodes", a clean node's lists empty and an unasked node's absent.
func TestStatusFindingsJSONAndYAML(t *testing.T) {
	rows, _ := fixtureRows(t)
	printAs := func(format string) string {
		var out bytes.Buffer
		if err := newStatusPrinter(&out, format, statusNow).print(rows, fixtureFindings(), true); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	j := printAs("json")
	var fromJSON, fromYAML statusList
	if err := json.Unmarshal([]byte(j), &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(strings.TrimPrefix(printAs("yaml"), "---\n")), &fromYAML); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(statusList{Items: rows, Nodes: fixtureFindings()}, fromJSON); diff != "" {
		t.Errorf("json round trip (-printed +read):\n%s", diff)
	}
	if diff := cmp.Diff(fromJSON, fromYAML); diff != "" {
		t.Errorf("json and yaml differ (-json +yaml):\n%s", diff)
	}
	for _, want := range []string{
		`"node": "node-b",
      "agent": "stickyvol-node-b",
      "checked": "2026-11-29T11:59:00Z",
      "orphans": [],`,
		`"node": "node-c",
      "agent": "stickyvol-node-c",
      "error": "agent pod stickyvol-node-c is Pending, not running"
    }`,
	} {
		if !strings.Contains(j, want) {
			t.Errorf("no %s in:\n%s", want, j)
		}
	}
}

// agentResponse is what a fake clientset's proxy reactor answers: the
// response of an HTTP handler.
type agentResponse struct{ h http.Handler }

func (a agentResponse) DoRaw(context.Context) ([]byte, error) {
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, agentapi.Path, nil))
	return rec.Body.Bytes(), nil
}

func (a agentResponse) Stream(ctx context.Context) (io.ReadCloser, error) {
	raw, err := a.DoRaw(ctx)
	return io.NopCloser(bytes.NewReader(raw)), err
}
