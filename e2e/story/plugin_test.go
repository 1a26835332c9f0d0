//go:build e2e

package story

import (
	"bufio"
	"context"
	"encoding/json"
	"path"
	"slices"
	"strings"
	"testing"
	"time"
)

// statusItem is what `kubectl stickyvol status -o json` prints per claim
// (cmd/stickyvol/status_rows.go), the fields a user reads.
type statusItem struct {
	Namespace string `json:"namespace"`
	Claim     string `json:"claim"`
	Phase     string `json:"phase"`
	PV        string `json:"pv"`
	Node      string `json:"node"`
	Path      string `json:"path"`
}

// TestKubectlPlugin runs the agent's binary as `kubectl stickyvol`, found by
// kubectl on PATH, with KUBECONFIG from the environment only (as after
// `eval "$(make -s cluster-env)"`): status lists each claim with the PV,
// node and directory the pod really uses, reaches the agents of those nodes
// through the pod proxy, and --watch prints a claim that appears while it
// runs.
func TestKubectlPlugin(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	pods := e.createStatefulSet(ctx, statefulSet("listed", 2, spread))

	e.step("kubectl stickyvol version")
	out, err := e.Kubectl(ctx, "stickyvol", "version")
	if err != nil || !strings.HasPrefix(string(out), "stickyvol ") {
		t.Fatalf("kubectl stickyvol version: %q, %v", out, err)
	}

	e.step("kubectl stickyvol status -n %s -o json", e.ns)
	out, err = e.Kubectl(ctx, "stickyvol", "status", "-n", e.ns, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []statusItem
		// Nodes are the agents' findings (cmd/stickyvol/status_agents.go).
		Nodes []struct{ Node, Error string }
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if len(list.Items) != len(pods) {
		t.Fatalf("status lists %d claims, want %d:\n%s", len(list.Items), len(pods), out)
	}
	for i, pod := range pods {
		b := e.bindingOf(ctx, pod)
		want := statusItem{Namespace: e.ns, Claim: b.claim, Phase: "Bound", PV: b.pv, Node: b.node,
			Path: path.Join("/var/lib/stickyvol/volumes", b.handle)}
		if list.Items[i] != want {
			t.Errorf("status says %+v\nthe cluster says %+v", list.Items[i], want)
		}
		// The agent of the claim's node answered through the API
		// server's pod proxy.
		asked := slices.ContainsFunc(list.Nodes, func(n struct{ Node, Error string }) bool {
			return n.Node == b.node && n.Error == ""
		})
		if !asked {
			t.Errorf("status did not get node %s's volumes from its agent: %+v", b.node, list.Nodes)
		}
	}

	e.step("kubectl stickyvol status --watch while the StatefulSet grows")
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	cmd := e.KubectlCommand(watchCtx, "stickyvol", "status", "-n", e.ns, "--watch", "--no-usage")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stop(); _ = cmd.Wait() }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	waitLine(t, lines, "data-listed-1 Bound")
	e.scale(ctx, "listed", 3)
	waitLine(t, lines, "data-listed-2 Bound")
}

// waitLine reads lines until one holds want (compared word by word) and
// fails if the output ends or a minute passes first.
func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(time.Minute)
	var seen []string
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("output ended without %q:\n%s", want, strings.Join(seen, "\n"))
			}
			seen = append(seen, line)
			if strings.Contains(strings.Join(strings.Fields(line), " "), want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q within a minute:\n%s", want, strings.Join(seen, "\n"))
		}
	}
}
