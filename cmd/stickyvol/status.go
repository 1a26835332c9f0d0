package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/provisioner"
)

// statusOptions are the flags of `stickyvol status`.
type statusOptions struct {
	kubeconfig string
	namespace  string
	dataRoot   string
	noUsage    bool
}

func newStatusCommand() *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List stickyvol claims: claim -> PV -> node -> path -> capacity -> used",
		Long: "Lists the claims of stickyvol StorageClasses and stickyvol PVs from the API server.\n" +
			"USED comes from kubelet's volume statistics (nodes/proxy stats/summary) and is\n" +
			"known only for volumes a running pod mounts; '-' otherwise.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
				&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.kubeconfig}, nil).ClientConfig()
			if err != nil {
				return fmt.Errorf("API client configuration: %w", err)
			}
			kube, err := kubeClient(cfg, 20, 40)
			if err != nil {
				return err
			}
			rows, warnings, err := statusRows(cmd.Context(), kube, o, kubeletUsage(kube))
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return printStatus(cmd.OutOrStdout(), rows)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file. Empty: as kubectl ($KUBECONFIG, ~/.kube/config), else the in-cluster service account.")
	f.StringVarP(&o.namespace, "namespace", "n", "", "Only claims in this namespace. Empty: all namespaces.")
	f.StringVar(&o.dataRoot, "data-root", "/var/lib/stickyvol", "The nodes' --data-root, to show where each volume's directory is.")
	f.BoolVar(&o.noUsage, "no-usage", false, "Do not ask kubelets for used bytes.")
	return cmd
}

// statusRow is one line of the table.
type statusRow struct {
	namespace, claim, phase, pv, node, path, capacity, used string
}

// claimKey names a claim in kubelet's volume statistics.
type claimKey struct{ namespace, name string }

// usageFunc returns the used bytes of the claims mounted on a node.
type usageFunc func(ctx context.Context, node string) (map[claimKey]uint64, error)

// statusRows lists the stickyvol claims (those of a class whose provisioner
// is the driver, or bound to a PV of the driver), sorted by namespace and
// name, with their PV, node, directory, capacity and use.
func statusRows(ctx context.Context, kube kubernetes.Interface, o *statusOptions, usage usageFunc) ([]statusRow, []string, error) {
	classes, err := kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("listing StorageClasses: %w", err)
	}
	ours := map[string]bool{}
	for _, c := range classes.Items {
		ours[c.Name] = c.Provisioner == driver.Name
	}
	pvList, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("listing PersistentVolumes: %w", err)
	}
	pvs := map[string]*v1.PersistentVolume{}
	// A PV made for a claim the PV controller has not bound yet names the
	// claim in its claimRef only; showing it tells "provisioned, waiting
	// for the bind" from "not provisioned".
	prebound := map[types.UID]*v1.PersistentVolume{}
	for i := range pvList.Items {
		if pv := &pvList.Items[i]; pv.Spec.CSI != nil && pv.Spec.CSI.Driver == driver.Name {
			pvs[pv.Name] = pv
			if pv.Spec.ClaimRef != nil {
				prebound[pv.Spec.ClaimRef.UID] = pv
			}
		}
	}
	claims, err := kube.CoreV1().PersistentVolumeClaims(o.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("listing PersistentVolumeClaims: %w", err)
	}

	var rows []statusRow
	nodes := map[string]bool{}
	for i := range claims.Items {
		claim := &claims.Items[i]
		pv := pvs[claim.Spec.VolumeName]
		if claim.Spec.VolumeName == "" {
			pv = prebound[claim.UID]
		}
		if pv == nil && (claim.Spec.StorageClassName == nil || !ours[*claim.Spec.StorageClassName]) {
			continue
		}
		row := claimRow(claim, pv, o.dataRoot)
		if pv != nil && row.node != "-" {
			nodes[row.node] = true
		}
		rows = append(rows, row)
	}
	var warnings []string
	if !o.noUsage {
		warnings = fillUsage(ctx, rows, nodes, usage)
	}
	slices.SortFunc(rows, func(a, b statusRow) int {
		if c := strings.Compare(a.namespace, b.namespace); c != 0 {
			return c
		}
		return compareNames(a.claim, b.claim)
	})
	return rows, warnings, nil
}

// compareNames orders StatefulSet claims by ordinal: data-web-2 before
// data-web-10.
func compareNames(a, b string) int {
	ap, an, aok := splitOrdinal(a)
	bp, bn, bok := splitOrdinal(b)
	if aok && bok && ap == bp {
		return cmp.Compare(an, bn)
	}
	return strings.Compare(a, b)
}

func splitOrdinal(name string) (string, int, bool) {
	i := strings.LastIndex(name, "-")
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(name[i+1:])
	return name[:i], n, err == nil
}

// claimRow describes one claim; a pending claim shows its selected node.
func claimRow(claim *v1.PersistentVolumeClaim, pv *v1.PersistentVolume, dataRoot string) statusRow {
	row := statusRow{namespace: claim.Namespace, claim: claim.Name, phase: string(claim.Status.Phase),
		pv: "-", node: "-", path: "-", capacity: "-", used: "-"}
	if node := claim.Annotations[provisioner.AnnSelectedNode]; node != "" {
		row.node = node
	}
	if pv == nil {
		if q, ok := claim.Spec.Resources.Requests[v1.ResourceStorage]; ok {
			row.capacity = q.String() + " (requested)"
		}
		return row
	}
	row.pv = pv.Name
	if nodes := provisioner.NodesOf(pv, driver.TopologyKey).UnsortedList(); len(nodes) == 1 {
		row.node = nodes[0]
	}
	// The driver keeps volume <id> in <data-root>/volumes/<id>.
	row.path = filepath.Join(dataRoot, "volumes", pv.Spec.CSI.VolumeHandle)
	if q, ok := pv.Spec.Capacity[v1.ResourceStorage]; ok {
		row.capacity = q.String()
	}
	return row
}

// fillUsage asks each node once for its volumes' use and fills it in. A node
// that cannot be asked leaves '-' and a warning.
func fillUsage(ctx context.Context, rows []statusRow, nodes map[string]bool, usage usageFunc) []string {
	var warnings []string
	used := map[claimKey]uint64{}
	for _, node := range slices.Sorted(maps.Keys(nodes)) {
		u, err := usage(ctx, node)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("no usage from node %s: %v", node, err))
			continue
		}
		for k, v := range u {
			used[k] = v
		}
	}
	for i := range rows {
		if v, ok := used[claimKey{rows[i].namespace, rows[i].claim}]; ok && rows[i].pv != "-" {
			rows[i].used = resource.NewQuantity(int64(v), resource.BinarySI).String()
		}
	}
	return warnings
}

// kubeletUsage reads kubelet's summary API through the API server's node
// proxy (RBAC: get nodes/proxy), the same numbers kubelet exports as
// kubelet_volume_stats_used_bytes.
func kubeletUsage(kube kubernetes.Interface) usageFunc {
	return func(ctx context.Context, node string) (map[claimKey]uint64, error) {
		raw, err := kube.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy", "stats", "summary").DoRaw(ctx)
		if err != nil {
			return nil, err
		}
		var summary statsv1alpha1.Summary
		if err := json.Unmarshal(raw, &summary); err != nil {
			return nil, fmt.Errorf("decoding kubelet's summary: %w", err)
		}
		return claimUsage(summary), nil
	}
}

func claimUsage(summary statsv1alpha1.Summary) map[claimKey]uint64 {
	used := map[claimKey]uint64{}
	for _, pod := range summary.Pods {
		for _, vol := range pod.VolumeStats {
			if vol.PVCRef != nil && vol.UsedBytes != nil {
				used[claimKey{vol.PVCRef.Namespace, vol.PVCRef.Name}] = *vol.UsedBytes
			}
		}
	}
	return used
}

func printStatus(w io.Writer, rows []statusRow) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tCLAIM\tSTATUS\tPV\tNODE\tPATH\tCAPACITY\tUSED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.namespace, r.claim, r.phase, r.pv, r.node, r.path, r.capacity, r.used)
	}
	return tw.Flush()
}
