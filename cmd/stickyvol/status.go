package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// statusOptions are the flags of `stickyvol status`.
type statusOptions struct {
	kubeconfig     string
	context        string
	namespace      string
	dataRoot       string
	noUsage        bool
	output         string
	watch          bool
	usageInterval  time.Duration
	agents         bool
	agentNamespace string
}

// outputFormats are the values of status -o; "" is the plain table.
var outputFormats = []string{"", "wide", "json", "yaml"}

func newStatusCommand() *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List stickyvol claims: claim -> PV -> node -> path -> capacity -> used",
		Long: "Lists the claims of stickyvol StorageClasses and stickyvol PVs from the API server.\n" +
			"USED comes from kubelet's volume statistics (nodes/proxy stats/summary) and is\n" +
			"known only for volumes a running pod mounts; '-' otherwise.\n\n" +
			"After the claims it lists what only the nodes' agents know, on every node: orphan\n" +
			"volumes (no PV or claim), PVs whose volume is missing, volumes whose record is set\n" +
			"aside; a clean node gets no line. It asks each agent through the API server's pod\n" +
			"proxy (list pods and get pods/proxy in --agent-namespace); an agent it cannot ask\n" +
			"gets a warning.\n\n" +
			"The API server is found as kubectl finds it: --kubeconfig, else $KUBECONFIG, else\n" +
			"~/.kube/config, else the pod's service account when run inside a cluster.",
		Example: "  stickyvol status\n" +
			"  kubectl stickyvol status -n web -o wide\n" +
			"  kubectl stickyvol status --watch",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !slices.Contains(outputFormats, o.output) {
				return fmt.Errorf("--output %q: want one of wide, json, yaml (or none for the table)", o.output)
			}
			cfg, err := o.restConfig()
			if err != nil {
				return err
			}
			kube, err := kubeClient(cfg, 20, 40)
			if err != nil {
				return err
			}
			if o.watch {
				return watchStatus(cmd.Context(), kube, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			return showStatus(cmd, kube, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file. Empty: as kubectl ($KUBECONFIG, ~/.kube/config), else the in-cluster service account.")
	f.StringVar(&o.context, "context", "", "The kubeconfig context to use. Empty: its current context.")
	f.StringVarP(&o.namespace, "namespace", "n", "", "Only claims in this namespace. Empty: all namespaces.")
	f.StringVar(&o.dataRoot, "data-root", "/var/lib/stickyvol", "The nodes' --data-root, to show where each volume's directory is.")
	f.BoolVar(&o.noUsage, "no-usage", false, "Do not ask kubelets for used bytes.")
	f.StringVarP(&o.output, "output", "o", "", "Output format: wide (adds class, access modes, reclaim policy, age), json or yaml.")
	f.BoolVarP(&o.watch, "watch", "w", false, "After the list, print each claim again whenever it, its PV or its use changes.")
	f.DurationVar(&o.usageInterval, "usage-interval", 30*time.Second, "With --watch: how often to ask kubelets for used bytes.")
	f.BoolVar(&o.agents, "agents", true, "Ask each node's agent for its orphan, missing and unavailable volumes and list them after the claims. With --watch, with the first list only: agents compare every --reconcile-period (5m by default), so run status again for new findings.")
	f.StringVar(&o.agentNamespace, "agent-namespace", "stickyvol", "Namespace of the agents' pods (the DaemonSet stickyvol-node).")
	return cmd
}

// restConfig loads the client configuration with kubectl's rules. A
// ClientConfigLoadingRules built by hand, with only ExplicitPath set, has no
// Precedence list and so reads neither $KUBECONFIG nor ~/.kube/config; the
// default rules read both, and the deferred loader falls back to the
// in-cluster service account when neither names a server.
func (o *statusOptions) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.context}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return nil, errors.New("no API server configured: set $KUBECONFIG or --kubeconfig, " +
			"or write ~/.kube/config (on the local cluster: eval \"$(make -s cluster-env)\")")
	}
	if err != nil {
		return nil, fmt.Errorf("API client configuration: %w", err)
	}
	return cfg, nil
}

// showStatus lists once and prints.
func showStatus(cmd *cobra.Command, kube kubernetes.Interface, o *statusOptions) error {
	ctx := cmd.Context()
	objs, err := listStatusObjects(ctx, kube, o.namespace)
	if err != nil {
		return err
	}
	rows := statusRows(objs, o.dataRoot)
	var warnings []string
	if !o.noUsage {
		warnings = fillUsage(ctx, rows, kubeletUsage(kube))
	}
	nodes, agentWarnings := askAgents(ctx, kube, o, rows)
	for _, w := range append(warnings, agentWarnings...) {
		fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
	}
	return newStatusPrinter(cmd.OutOrStdout(), o.output, time.Now()).print(rows, nodes, true)
}

// askAgents asks the agents for their findings unless --agents=false, and
// says which could not be asked.
func askAgents(ctx context.Context, kube kubernetes.Interface, o *statusOptions, rows []volumeStatus) ([]nodeFindings, []string) {
	if !o.agents {
		return nil, nil
	}
	nodes, err := agentFindings(ctx, kube, o.agentNamespace, claimNodes(rows), agentTimeout)
	if err != nil {
		return nil, []string{"no orphan, missing or unavailable volumes listed: " + err.Error()}
	}
	return nodes, findingsWarnings(nodes)
}

// listStatusObjects reads what status shows: classes, PVs and claims.
func listStatusObjects(ctx context.Context, kube kubernetes.Interface, namespace string) (statusObjects, error) {
	var objs statusObjects
	classes, err := kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return objs, fmt.Errorf("listing StorageClasses: %w", err)
	}
	pvs, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return objs, fmt.Errorf("listing PersistentVolumes: %w", err)
	}
	claims, err := kube.CoreV1().PersistentVolumeClaims(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return objs, fmt.Errorf("listing PersistentVolumeClaims: %w", err)
	}
	for i := range classes.Items {
		objs.classes = append(objs.classes, &classes.Items[i])
	}
	for i := range pvs.Items {
		objs.pvs = append(objs.pvs, &pvs.Items[i])
	}
	for i := range claims.Items {
		objs.claims = append(objs.claims, &claims.Items[i])
	}
	return objs, nil
}

// pluginName is the name kubectl finds a plugin by: `kubectl stickyvol ...`
// runs the first kubectl-stickyvol on $PATH.
const pluginName = "kubectl-stickyvol"

// commandName is what the help calls the program: "kubectl stickyvol" when
// it runs as the kubectl plugin, else "stickyvol".
func commandName(arg0 string) string {
	if strings.TrimSuffix(filepath.Base(arg0), ".exe") == pluginName {
		return "kubectl stickyvol"
	}
	return "stickyvol"
}
