package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// The example runs where `kubectl apply -f deploy/examples/web.yaml` puts
// it, so that the commands the demo suggests work as they are.
const (
	demoNamespace = "default"
	stsName       = "web"
	replicas      = 3
)

var webPods = labels.SelectorFromSet(labels.Set{"app.kubernetes.io/name": stsName})

// demo is the StatefulSet story told on the cluster.
type demo struct {
	f   *framework.Framework
	p   *progress
	out io.Writer
	// where records each pod's claim, PV and node when first seen.
	where map[string]placement
	// notes holds what the demo wrote in each pod's /data/note.
	notes map[string]string
	// seenReady holds the pods already reported Ready.
	seenReady map[types.UID]bool
}

// placement is a pod's claim, PV and node.
type placement struct{ claim, pv, node string }

func (d *demo) story(ctx context.Context) error {
	for _, part := range []func(context.Context) error{
		d.createWeb, d.writeNotes, d.deletePrimary, d.scaleDownUp, d.snapshotRestore,
	} {
		if err := part(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) createWeb(ctx context.Context) error {
	d.p.step("the example StatefulSet: %d pods, one claim and one volume each", replicas)
	if err := d.removeEarlierWeb(ctx); err != nil {
		return err
	}
	d.cmd("kubectl apply -f %s", framework.ExampleWebFile)
	if _, err := d.f.ApplyFile(ctx, demoNamespace, framework.ExampleWebFile); err != nil {
		return err
	}
	d.p.logf("web-0 starts first; web-1 and web-2 follow once it is Ready and copy its log from web-0.web")
	pods, err := d.readyPods(ctx, replicas)
	if err != nil {
		return err
	}
	d.where = map[string]placement{}
	for _, pod := range pods {
		pl, err := d.placementOf(ctx, pod)
		if err != nil {
			return err
		}
		d.where[pod.Name] = pl
	}
	d.table(pods)
	d.cmd("kubectl stickyvol status")
	return d.status(ctx)
}

func (d *demo) writeNotes(ctx context.Context) error {
	d.p.step("write data: each pod writes a note into its volume")
	for i := range replicas {
		pod := fmt.Sprintf("%s-%d", stsName, i)
		note := fmt.Sprintf("written by make demo at %s into %s on %s", time.Now().UTC().Format(time.TimeOnly), pod, d.where[pod].node)
		d.cmd("kubectl exec %s -- sh -c 'echo \"%s\" > /data/note'", pod, note)
		if _, err := d.f.Exec(ctx, demoNamespace, pod, nil, "sh", "-c", `echo "$1" > /data/note`, "sh", note); err != nil {
			return err
		}
		d.notes[pod] = note
	}
	return nil
}

func (d *demo) deletePrimary(ctx context.Context) error {
	const pod = stsName + "-0"
	d.p.step("delete pod %s: it comes back with the same claim, node and data", pod)
	old, err := d.f.Client.CoreV1().Pods(demoNamespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	d.cmd("kubectl delete pod %s", pod)
	if err := d.f.Client.CoreV1().Pods(demoNamespace).Delete(ctx, pod, metav1.DeleteOptions{}); err != nil {
		return err
	}
	if err := d.f.WaitForPodGone(ctx, demoNamespace, pod, string(old.UID)); err != nil {
		return err
	}
	d.p.logf("%s (uid %s) is gone; the StatefulSet controller makes a new %s", pod, short(string(old.UID)), pod)
	pods, err := d.readyPods(ctx, replicas)
	if err != nil {
		return err
	}
	d.p.logf("%s is back (uid %s)", pod, short(string(pods[0].UID)))
	return d.checkSame(ctx, pods[:1])
}

func (d *demo) scaleDownUp(ctx context.Context) error {
	d.p.step("scale %d -> 1 -> %d: the claims stay, and so does the data", replicas, replicas)
	d.cmd("kubectl scale statefulset %s --replicas=1", stsName)
	if err := d.scale(ctx, 1); err != nil {
		return err
	}
	claims, err := d.f.Client.CoreV1().PersistentVolumeClaims(demoNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, c := range claims.Items {
		if isWebClaim(&c) {
			d.p.logf("claim %s: %s, volume %s", c.Name, c.Status.Phase, c.Spec.VolumeName)
		}
	}
	d.cmd("kubectl scale statefulset %s --replicas=%d", stsName, replicas)
	if err := d.scale(ctx, replicas); err != nil {
		return err
	}
	pods, err := d.readyPods(ctx, replicas)
	if err != nil {
		return err
	}
	return d.checkSame(ctx, pods[1:])
}

// checkSame shows, and checks, that each pod found the claim, PV, node and
// note it had before.
func (d *demo) checkSame(ctx context.Context, pods []*v1.Pod) error {
	for _, pod := range pods {
		pl, err := d.placementOf(ctx, pod)
		if err != nil {
			return err
		}
		if was := d.where[pod.Name]; pl != was {
			return fmt.Errorf("%s now has claim %s, PV %s on node %s; it had %s, %s on %s",
				pod.Name, pl.claim, pl.pv, pl.node, was.claim, was.pv, was.node)
		}
		note, err := d.f.Exec(ctx, demoNamespace, pod.Name, nil, "cat", "/data/note")
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(string(note)); got != d.notes[pod.Name] {
			return fmt.Errorf("%s reads the note %q, want %q", pod.Name, got, d.notes[pod.Name])
		}
		starts, err := d.f.Exec(ctx, demoNamespace, pod.Name, nil, "cat", "/data/starts")
		if err != nil {
			return err
		}
		d.p.logf("%s: same claim %s, same PV %s, same node %s", pod.Name, pl.claim, pl.pv, pl.node)
		d.cmd("kubectl exec %s -- cat /data/note /data/starts", pod.Name)
		d.p.block(string(note) + string(starts))
	}
	return nil
}

// removeEarlierWeb deletes the example and its claims left by an earlier
// demo on an attached cluster, so that the story starts from nothing.
func (d *demo) removeEarlierWeb(ctx context.Context) error {
	cs := d.f.Client
	err := cs.AppsV1().StatefulSets(demoNamespace).Delete(ctx, stsName, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	d.p.logf("removing the StatefulSet %s and its claims left by an earlier run", stsName)
	if _, err := framework.WaitFor(ctx, d.f.Pods(demoNamespace, webPods), &v1.Pod{}, func(pods []*v1.Pod) (bool, error) {
		return len(pods) == 0, nil
	}); err != nil {
		return err
	}
	claims, err := cs.CoreV1().PersistentVolumeClaims(demoNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, c := range claims.Items {
		if isWebClaim(&c) {
			if err := cs.CoreV1().PersistentVolumeClaims(demoNamespace).Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	// A claim still being deleted would be taken for the new pod's claim.
	_, err = framework.WaitFor(ctx, d.f.Claims(demoNamespace), &v1.PersistentVolumeClaim{}, func(claims []*v1.PersistentVolumeClaim) (bool, error) {
		return !slices.ContainsFunc(claims, isWebClaim), nil
	})
	return err
}

// isWebClaim reports whether the claim is one of the example's.
func isWebClaim(c *v1.PersistentVolumeClaim) bool {
	return strings.HasPrefix(c.Name, "data-"+stsName+"-")
}

// readyPods waits until the StatefulSet has n Ready pods, saying when each
// becomes Ready, and returns them by name.
func (d *demo) readyPods(ctx context.Context, n int) ([]*v1.Pod, error) {
	pods, err := framework.WaitFor(ctx, d.f.Pods(demoNamespace, webPods), &v1.Pod{}, func(pods []*v1.Pod) (bool, error) {
		ready := 0
		for _, p := range pods {
			if p.DeletionTimestamp == nil && framework.PodReady(p) {
				ready++
				if !d.seenReady[p.UID] {
					d.seenReady[p.UID] = true
					d.p.logf("%s is Ready on %s", p.Name, p.Spec.NodeName)
				}
			}
		}
		return len(pods) == n && ready == n, nil
	})
	if err != nil {
		return nil, err
	}
	// The pods are there; this waits for the controller to have seen them.
	_, err = d.f.WaitForStatefulSet(ctx, demoNamespace, stsName)
	return pods, err
}

func (d *demo) scale(ctx context.Context, n int32) error {
	sts := d.f.Client.AppsV1().StatefulSets(demoNamespace)
	s, err := sts.GetScale(ctx, stsName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	s.Spec.Replicas = n
	if _, err := sts.UpdateScale(ctx, stsName, s, metav1.UpdateOptions{}); err != nil {
		return err
	}
	pods, err := d.readyPods(ctx, int(n))
	if err != nil {
		return err
	}
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	d.p.logf("pods now: %s", strings.Join(names, ", "))
	return nil
}

// placementOf follows the pod's volume "data" to its claim and PV.
func (d *demo) placementOf(ctx context.Context, pod *v1.Pod) (placement, error) {
	claimName := "data-" + pod.Name
	c, err := d.f.Client.CoreV1().PersistentVolumeClaims(demoNamespace).Get(ctx, claimName, metav1.GetOptions{})
	if err != nil {
		return placement{}, err
	}
	if c.Spec.VolumeName == "" {
		return placement{}, fmt.Errorf("claim %s of running pod %s has no volume", claimName, pod.Name)
	}
	pv, err := d.f.Client.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return placement{}, err
	}
	if nodes := framework.NodesOf(pv); len(nodes) != 1 || nodes[0] != pod.Spec.NodeName {
		return placement{}, fmt.Errorf("PV %s may be used on %v, but its pod %s runs on %s", pv.Name, nodes, pod.Name, pod.Spec.NodeName)
	}
	return placement{claim: claimName, pv: pv.Name, node: pod.Spec.NodeName}, nil
}

func (d *demo) table(pods []*v1.Pod) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tCLAIM\tPV (its node affinity: the pod's node)")
	for _, pod := range pods {
		pl := d.where[pod.Name]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", pod.Name, pl.node, pl.claim, pl.pv)
	}
	tw.Flush()
	d.p.block(b.String())
}

// status runs `kubectl stickyvol status` as the user will after the demo,
// with KUBECONFIG and PATH from `make cluster-env` and no flags: the plugin
// is the stickyvol binary the images were built from.
func (d *demo) status(ctx context.Context) error {
	out, err := d.f.Kubectl(ctx, "stickyvol", "status")
	if err != nil {
		return err
	}
	d.p.block(string(out))
	return nil
}

// cmd shows the command a user would type for what the demo does next.
func (d *demo) cmd(format string, args ...any) {
	d.p.logf("$ "+format, args...)
}

func short(uid string) string { return uid[:min(8, len(uid))] }
