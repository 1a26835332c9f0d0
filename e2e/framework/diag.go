package framework

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Dump writes what explains a failure: the events, pods and claims of the
// namespaces, stickyvol's PVs, the logs of the stickyvol pods and the tail of
// every cluster component's log. It never fails; what it cannot read it says.
func (f *Framework) Dump(ctx context.Context, w io.Writer, namespaces ...string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, ns := range append(namespaces, Namespace) {
		f.dumpEvents(ctx, w, ns)
		f.dumpPods(ctx, w, ns)
	}
	for _, ns := range namespaces {
		f.dumpClaims(ctx, w, ns)
	}
	f.dumpVolumes(ctx, w)
	f.dumpAgentLogs(ctx, w, 60)
	fmt.Fprintln(w, "=== cluster component logs (tails)")
	f.Cluster.PrintLogTails(w, 15)
}

func (f *Framework) dumpEvents(ctx context.Context, w io.Writer, ns string) {
	fmt.Fprintf(w, "=== events in %s\n", ns)
	events, err := f.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "listing: %v\n", err)
		return
	}
	items := events.Items
	sort.SliceStable(items, func(i, j int) bool { return eventTime(&items[i]).Before(eventTime(&items[j])) })
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, e := range items {
		from := e.ReportingController
		if from == "" {
			from = e.Source.Component
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s\t(x%d, %s)\n", eventTime(&e).Format("15:04:05"), e.Type, e.Reason,
			e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message, max(e.Count, 1), from)
	}
	tw.Flush()
}

func eventTime(e *v1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case e.Series != nil:
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

func (f *Framework) dumpPods(ctx context.Context, w io.Writer, ns string) {
	fmt.Fprintf(w, "=== pods in %s\n", ns)
	pods, err := f.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "listing: %v\n", err)
		return
	}
	for _, p := range pods.Items {
		fmt.Fprintf(w, "%s phase=%s node=%s deleting=%v\n", p.Name, p.Status.Phase, p.Spec.NodeName, p.DeletionTimestamp != nil)
		for _, c := range p.Status.Conditions {
			if c.Status != v1.ConditionTrue {
				fmt.Fprintf(w, "  %s=%s %s: %s\n", c.Type, c.Status, c.Reason, c.Message)
			}
		}
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			fmt.Fprintf(w, "  container %s ready=%v restarts=%d %s\n", cs.Name, cs.Ready, cs.RestartCount, containerState(cs.State))
		}
	}
}

func containerState(s v1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return fmt.Sprintf("waiting %s: %s", s.Waiting.Reason, s.Waiting.Message)
	case s.Terminated != nil:
		return fmt.Sprintf("terminated %s (exit %d): %s", s.Terminated.Reason, s.Terminated.ExitCode, s.Terminated.Message)
	case s.Running != nil:
		return "running since " + s.Running.StartedAt.Format("15:04:05")
	}
	return "unknown"
}

func (f *Framework) dumpClaims(ctx context.Context, w io.Writer, ns string) {
	fmt.Fprintf(w, "=== claims in %s\n", ns)
	claims, err := f.Client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "listing: %v\n", err)
		return
	}
	for _, c := range claims.Items {
		fmt.Fprintf(w, "%s phase=%s volume=%s modes=%v selected-node=%q\n", c.Name, c.Status.Phase, c.Spec.VolumeName,
			c.Spec.AccessModes, c.Annotations["volume.kubernetes.io/selected-node"])
	}
}

func (f *Framework) dumpVolumes(ctx context.Context, w io.Writer) {
	fmt.Fprintln(w, "=== stickyvol PVs")
	pvs, err := f.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "listing: %v\n", err)
		return
	}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != DriverName {
			continue
		}
		claim := "-"
		if ref := pv.Spec.ClaimRef; ref != nil {
			claim = ref.Namespace + "/" + ref.Name
		}
		size := pv.Spec.Capacity[v1.ResourceStorage]
		fmt.Fprintf(w, "%s phase=%s claim=%s node=%v reclaim=%s capacity=%s\n", pv.Name, pv.Status.Phase, claim,
			NodesOf(&pv), pv.Spec.PersistentVolumeReclaimPolicy, size.String())
	}
}

// dumpAgentLogs prints the last lines of every stickyvol pod's log, and of
// its previous container when it restarted.
func (f *Framework) dumpAgentLogs(ctx context.Context, w io.Writer, lines int64) {
	pods, err := f.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: AgentPodLabel})
	if err != nil {
		fmt.Fprintf(w, "listing stickyvol pods: %v\n", err)
		return
	}
	for _, p := range pods.Items {
		previous := []bool{false}
		if len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].RestartCount > 0 {
			previous = []bool{true, false}
		}
		for _, prev := range previous {
			fmt.Fprintf(w, "=== log of %s/%s on %s (previous=%v, last %d lines)\n", Namespace, p.Name, p.Spec.NodeName, prev, lines)
			data, err := f.Client.CoreV1().Pods(Namespace).GetLogs(p.Name, &v1.PodLogOptions{TailLines: &lines, Previous: prev}).DoRaw(ctx)
			if err != nil {
				fmt.Fprintf(w, "reading: %v\n", err)
				continue
			}
			fmt.Fprintf(w, "%s\n", bytes.TrimRight(data, "\n"))
		}
	}
}

// NodesOf returns the node names a stickyvol PV's node affinity allows.
func NodesOf(pv *v1.PersistentVolume) []string {
	var nodes []string
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return nil
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if expr.Key == TopologyKey && expr.Operator == v1.NodeSelectorOpIn {
				nodes = append(nodes, expr.Values...)
			}
		}
	}
	return nodes
}

// Indent indents every line of s, for command output in progress lines.
func Indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
