package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// readyTimeout bounds each wait of Up once its processes run; a warm start
// takes seconds.
const readyTimeout = 2 * time.Minute

// kwokNodeAnnotation marks the nodes kwok manages.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

func (c *Cluster) waitAPIServer(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	return c.poll(ctx, "kube-apiserver", readyTimeout, func(ctx context.Context) (bool, error) {
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok", err
	})
}

// waitReady waits until the cluster is usable the way a test uses it: every
// node Ready, the controllers and the scheduler healthy, Services served by
// kube-proxy, cluster DNS answering, the kubernetes Service pointing at the
// API server, and the default ServiceAccount and root CA ConfigMap made.
func (c *Cluster) waitReady(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	healthz := func(client *http.Client, url string) func(context.Context) (bool, error) {
		return func(ctx context.Context) (bool, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return false, err
			}
			resp, err := client.Do(req)
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false, fmt.Errorf("%s: %s", url, resp.Status)
			}
			return true, nil
		}
	}
	plain := &http.Client{Transport: &http.Transport{}}
	waits := map[string]func(context.Context) (bool, error){
		"kube-controller-manager": healthz(insecure, "https://"+hostPort("127.0.0.1", c.st.Ports.ControllerMgr)+"/healthz"),
		"kube-scheduler":          healthz(insecure, "https://"+hostPort("127.0.0.1", c.st.Ports.Scheduler)+"/healthz"),
		"coredns":                 healthz(plain, "http://"+hostPort("127.0.0.1", c.st.Ports.DNSReady)+"/ready"),
		"snapshot-controller":     healthz(plain, c.snapshotControllerMetrics()),
		"nodes and API objects":   c.clusterReady(cs),
	}
	if c.hasKubeProxy() {
		waits["kube-proxy"] = healthz(plain, "http://"+hostPort("127.0.0.1", c.st.Ports.ProxyHealthz)+"/healthz")
	}
	g, gctx := errgroup.WithContext(ctx)
	for component, cond := range waits {
		g.Go(func() error {
			if err := c.poll(gctx, component, readyTimeout, cond); err != nil {
				return err
			}
			c.step("%s ready", component)
			return nil
		})
	}
	return g.Wait()
}

// clusterReady checks what only the API shows: nodes Ready, the kubernetes
// EndpointSlice, the default ServiceAccount and kube-root-ca.crt.
func (c *Cluster) clusterReady(cs kubernetes.Interface) func(context.Context) (bool, error) {
	want := len(c.st.Nodes) + c.st.FakeNodes
	return func(ctx context.Context) (bool, error) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		var ready []string
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready = append(ready, n.Name)
				}
			}
		}
		if len(ready) < want {
			return false, fmt.Errorf("%d of %d nodes Ready: %v", len(ready), want, ready)
		}
		eps, err := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=kubernetes",
		})
		if err != nil {
			return false, err
		}
		if !endpointsHold(eps.Items, apiAddress) {
			return false, fmt.Errorf("the kubernetes EndpointSlice does not hold %s yet", apiAddress)
		}
		if _, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, err
		}
		_, err = cs.CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil, err
	}
}

func endpointsHold(items []discoveryv1.EndpointSlice, addr string) bool {
	for _, s := range items {
		for _, ep := range s.Endpoints {
			if slices.Contains(ep.Addresses, addr) {
				return true
			}
		}
	}
	return false
}

// createFakeNodes registers the kwok nodes. The taint keeps pods that do not
// ask for a fake node (a DaemonSet, a StatefulSet under test) off them.
func (c *Cluster) createFakeNodes(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   *resource.NewQuantity(int64(c.st.FakeNodePods), resource.DecimalSI),
	}
	for i := 1; i <= c.st.FakeNodes; i++ {
		name := fakeNodeName(i)
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{kwokNodeAnnotation: "fake", "node.alpha.kubernetes.io/ttl": "0"},
				Labels: map[string]string{
					corev1.LabelHostname: name, corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64",
					"type": "kwok",
				},
			},
			Spec:   corev1.NodeSpec{Taints: []corev1.Taint{{Key: kwokNodeAnnotation, Value: "fake", Effect: corev1.TaintEffectNoSchedule}}},
			Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
		}
		if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating fake node %s: %w", name, err)
		}
	}
	c.step("%d kwok nodes created", c.st.FakeNodes)
	return nil
}
