//go:build e2e

package story

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestOrderedCreation runs the example StatefulSet (deploy/examples/web.yaml)
// as shipped: its claims data-web-0, -1, -2 appear in that order, each gets a
// PV of its own on its pod's node, the pods spread over both nodes, and the
// replicas copied the primary's log by its DNS name web-0.web.
func TestOrderedCreation(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)

	// Watch the namespace's claims before anything exists, so the order
	// of the ADDED events is the order in which they were created.
	w, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var created []string
	watched := make(chan error, 1)
	go func() {
		_, err := watchtools.UntilWithoutRetry(ctx, w, func(ev watch.Event) (bool, error) {
			if c, ok := ev.Object.(*v1.PersistentVolumeClaim); ok && ev.Type == watch.Added {
				created = append(created, c.Name)
			}
			return len(created) == 3, nil
		})
		watched <- err
	}()

	e.step("apply %s", framework.ExampleWebFile)
	if _, err := e.ApplyFile(ctx, e.ns, framework.ExampleWebFile); err != nil {
		t.Fatal(err)
	}
	pods := e.statefulSetReady(ctx, "web")
	if err := <-watched; err != nil {
		t.Fatalf("watching claims (created so far: %v): %v", created, err)
	}
	if want := []string{"data-web-0", "data-web-1", "data-web-2"}; !slices.Equal(created, want) {
		t.Errorf("claims were created in the order %v, want %v", created, want)
	}

	e.step("one PV per claim, on its pod's node")
	pvs := map[string]bool{}
	nodes := map[string]bool{}
	for i, pod := range pods {
		b := e.bindingOf(ctx, pod)
		t.Logf("%s", b)
		if want := fmt.Sprintf("data-web-%d", i); b.claim != want {
			t.Errorf("pod %s uses claim %s, want %s", pod.Name, b.claim, want)
		}
		if pvs[b.pv] {
			t.Errorf("PV %s serves two claims", b.pv)
		}
		pvs[b.pv] = true
		nodes[b.node] = true
	}
	all, err := e.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pv := range all.Items {
		if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == e.ns && !pvs[pv.Name] {
			t.Errorf("PV %s for claim %s is one too many", pv.Name, ref.Name)
		}
	}
	if len(nodes) != len(e.Cluster.Nodes()) {
		t.Errorf("the 3 pods run on %d nodes (%v); the example spreads them over all %d", len(nodes), nodes, len(e.Cluster.Nodes()))
	}

	e.step("the replicas copied the primary's log from web-0.web")
	for _, pod := range pods[1:] {
		out, err := e.Exec(ctx, e.ns, pod.Name, nil, "cat", "/data/web-0.log")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "web-0 on ") {
			t.Errorf("%s: /data/web-0.log does not hold web-0's log lines: %q", pod.Name, out)
		}
	}
}
