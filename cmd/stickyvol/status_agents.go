package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/stickyvol/stickyvol/internal/agentapi"
)

// How status asks the agents: this many at once, each within agentTimeout,
// so that one hung node costs seconds and a large cluster is not asked all
// at once through the API server.
const (
	agentTimeout     = 5 * time.Second
	agentConcurrency = 8
)

// nodeFindings is what a node's agent knows of its volumes and the API
// server does not; -o json and -o yaml print these under "nodes". The lists
// are empty for a clean node and absent when the agent could not be asked.
type nodeFindings struct {
	Node string `json:"node"`
	// Agent is the agent's pod.
	Agent string `json:"agent,omitempty"`
	// Error says why the agent could not be asked.
	Error string `json:"error,omitempty"`
	// Checked is when the agent last compared its volumes with the PVs;
	// absent before its first comparison.
	Checked     metav1.Time            `json:"checked,omitzero"`
	Orphans     []agentapi.Orphan      `json:"orphans,omitzero"`
	Missing     []agentapi.Missing     `json:"missing,omitzero"`
	Unavailable []agentapi.Unavailable `json:"unavailable,omitzero"`
}

// agentFindings asks the agent of every node that runs one, found by label
// in namespace, for its volumes through the API server's pod proxy (RBAC:
// list pods and get pods/proxy in namespace). nodes are the nodes of the
// claims shown: one without an agent gets an entry that says so. The error
// is for the pods that could not be listed; an agent that cannot be asked
// only sets its entry's Error.
func agentFindings(ctx context.Context, kube kubernetes.Interface, namespace string, nodes []string, timeout time.Duration) ([]nodeFindings, error) {
	pods, err := kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: agentapi.PodSelector})
	if err != nil {
		return nil, fmt.Errorf("listing the agents' pods in namespace %s: %w", namespace, err)
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("no agent pods (%s) in namespace %s; is stickyvol installed in another (--agent-namespace)?",
			agentapi.PodSelector, namespace)
	}
	agents := agentPods(pods.Items)
	for _, node := range nodes {
		if _, ok := agents[node]; !ok {
			agents[node] = nil
		}
	}
	// Each goroutine fills its own element of found.
	found := make([]nodeFindings, len(agents))
	var g errgroup.Group
	g.SetLimit(agentConcurrency)
	for i, node := range slices.Sorted(maps.Keys(agents)) {
		pod := agents[node]
		if pod == nil {
			found[i] = nodeFindings{Node: node, Error: "no agent pod on this node"}
			continue
		}
		found[i] = nodeFindings{Node: node, Agent: pod.Name}
		g.Go(func() error {
			doc, err := askAgent(ctx, kube, pod, timeout)
			if err != nil {
				found[i].Error = err.Error()
				return nil
			}
			found[i].Checked, found[i].Orphans, found[i].Missing, found[i].Unavailable =
				doc.Checked, doc.Orphans, doc.Missing, doc.Unavailable
			return nil
		})
	}
	_ = g.Wait() // the goroutines report in found
	return found, nil
}

// agentPods picks the pod to ask on each node: during a rolling update a
// node may have an old pod still stopping beside a new one.
func agentPods(pods []v1.Pod) map[string]*v1.Pod {
	rank := func(p *v1.Pod) int {
		switch {
		case p.DeletionTimestamp == nil && podReady(p):
			return 0
		case p.DeletionTimestamp == nil:
			return 1
		default:
			return 2
		}
	}
	agents := map[string]*v1.Pod{}
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName == "" {
			continue
		}
		if old, ok := agents[p.Spec.NodeName]; !ok || rank(p) < rank(old) {
			agents[p.Spec.NodeName] = p
		}
	}
	return agents
}

func podReady(p *v1.Pod) bool {
	return slices.ContainsFunc(p.Status.Conditions, func(c v1.PodCondition) bool {
		return c.Type == v1.PodReady && c.Status == v1.ConditionTrue
	})
}

// askAgent gets one agent's document through the pod proxy.
func askAgent(ctx context.Context, kube kubernetes.Interface, pod *v1.Pod, timeout time.Duration) (agentapi.NodeVolumes, error) {
	var doc agentapi.NodeVolumes
	if pod.Status.Phase != v1.PodRunning {
		return doc, fmt.Errorf("agent pod %s is %s, not running", pod.Name, cmp.Or(string(pod.Status.Phase), "not started"))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := kube.CoreV1().Pods(pod.Namespace).ProxyGet("http", pod.Name, agentPort(pod), agentapi.Path, nil).DoRaw(ctx)
	if err != nil {
		err = proxyError(raw, err)
		if !podReady(pod) {
			return doc, fmt.Errorf("agent pod %s is not ready: %w", pod.Name, err)
		}
		return doc, err
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return doc, fmt.Errorf("decoding the agent's %s: %w", agentapi.Path, err)
	}
	if doc.APIVersion != agentapi.APIVersion || doc.Kind != agentapi.Kind {
		return doc, fmt.Errorf("the agent serves %s %s; this stickyvol status reads %s %s",
			doc.APIVersion, doc.Kind, agentapi.APIVersion, agentapi.Kind)
	}
	return doc, nil
}

// proxyError is the reason of a failed proxy request. DoRaw's error says
// only "unknown" when the API server refuses (RBAC: no get pods/proxy); the
// reason is in the Status it answered with, which DoRaw returns as the body.
// A 404 that is no Status comes from the agent itself.
func proxyError(body []byte, err error) error {
	if obj, _, decodeErr := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil); decodeErr == nil {
		if status, ok := obj.(*metav1.Status); ok && status.Status == metav1.StatusFailure {
			return apierrors.FromObject(status)
		}
	}
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: the agent serves no %s (older than this stickyvol status?)", err, agentapi.Path)
	}
	return err
}

// agentPort is the number of the agent's port named agentapi.PortName: the
// pod proxy takes a number, and the chart lets the number change.
func agentPort(pod *v1.Pod) string {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == agentapi.PortName {
				return strconv.Itoa(int(p.ContainerPort))
			}
		}
	}
	return agentapi.PortName
}

// findingsWarnings are the lines status prints for the nodes whose agent
// could not be asked, or has not compared its volumes with the PVs yet.
func findingsWarnings(nodes []nodeFindings) []string {
	var warnings []string
	for _, f := range nodes {
		switch {
		case f.Error != "":
			warnings = append(warnings, fmt.Sprintf("no volumes from the agent of node %s: %s", f.Node, f.Error))
		case f.Checked.IsZero():
			warnings = append(warnings, fmt.Sprintf("the agent of node %s has not compared its volumes with the PVs yet: orphans and missing volumes unknown", f.Node))
		}
	}
	return warnings
}

// claimNodes are the nodes of the claims that have a PV.
func claimNodes(rows []volumeStatus) []string {
	var nodes []string
	for i := range rows {
		if rows[i].PV != "" && rows[i].Node != "" {
			nodes = append(nodes, rows[i].Node)
		}
	}
	slices.Sort(nodes)
	return slices.Compact(nodes)
}
