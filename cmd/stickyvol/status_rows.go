package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/provisioner"
)

// statusObjects is what status reads from the API server, from one list or
// from informers' caches.
type statusObjects struct {
	classes []*storagev1.StorageClass
	pvs     []*v1.PersistentVolume
	claims  []*v1.PersistentVolumeClaim
}

// volumeStatus is one claim as status shows it. -o json and -o yaml print
// these fields as they are; the tables print them with "-" for what is
// unknown.
type volumeStatus struct {
	Namespace    string   `json:"namespace"`
	Claim        string   `json:"claim"`
	Phase        string   `json:"phase"`
	StorageClass string   `json:"storageClass,omitempty"`
	AccessModes  []string `json:"accessModes,omitempty"`
	// PV is the claim's volume, or the PV made for it and not yet bound.
	PV string `json:"pv,omitempty"`
	// Node is the PV's node or, before there is a PV, the scheduler's
	// selected node.
	Node string `json:"node,omitempty"`
	// Path is the volume's directory on its node.
	Path string `json:"path,omitempty"`
	// Pool is the data root of the node that holds the volume ("default"
	// for --data-root); empty for volumes made before pools.
	Pool string `json:"pool,omitempty"`
	// Backend holds the volume's data: "btrfs" (size enforced) or
	// "directory" (size is bookkeeping); empty for volumes made before the
	// driver recorded it on the PV.
	Backend string `json:"backend,omitempty"`
	// Capacity is the PV's; Requested is the claim's request.
	Capacity      string `json:"capacity,omitempty"`
	Requested     string `json:"requested,omitempty"`
	ReclaimPolicy string `json:"reclaimPolicy,omitempty"`
	// UsedBytes is kubelet's last measurement of a mounted volume.
	UsedBytes *uint64     `json:"usedBytes,omitempty"`
	Created   metav1.Time `json:"created"`
}

// key names the claim of a row.
func (s *volumeStatus) key() claimKey { return claimKey{s.Namespace, s.Claim} }

// claimKey names a claim in kubelet's volume statistics.
type claimKey struct{ namespace, name string }

// usageFunc returns the used bytes of the claims mounted on a node.
type usageFunc func(ctx context.Context, node string) (map[claimKey]uint64, error)

// statusRows picks the stickyvol claims (those of a class whose provisioner
// is the driver, or bound to a PV of the driver), describes each, and sorts
// them by namespace and name, StatefulSet ordinals in numeric order.
func statusRows(objs statusObjects, dataRoot string) []volumeStatus {
	ours := map[string]bool{}
	for _, c := range objs.classes {
		ours[c.Name] = c.Provisioner == driver.Name
	}
	pvs := map[string]*v1.PersistentVolume{}
	// A PV made for a claim the PV controller has not bound yet names the
	// claim in its claimRef only; showing it tells "provisioned, waiting
	// for the bind" from "not provisioned".
	prebound := map[types.UID]*v1.PersistentVolume{}
	for _, pv := range objs.pvs {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == driver.Name {
			pvs[pv.Name] = pv
			if pv.Spec.ClaimRef != nil {
				prebound[pv.Spec.ClaimRef.UID] = pv
			}
		}
	}
	var rows []volumeStatus
	for _, claim := range objs.claims {
		pv := pvs[claim.Spec.VolumeName]
		if claim.Spec.VolumeName == "" {
			pv = prebound[claim.UID]
		}
		if pv == nil && (claim.Spec.StorageClassName == nil || !ours[*claim.Spec.StorageClassName]) {
			continue
		}
		rows = append(rows, claimStatus(claim, pv, dataRoot))
	}
	slices.SortFunc(rows, func(a, b volumeStatus) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return compareNames(a.Claim, b.Claim)
	})
	return rows
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

// claimStatus describes one claim; a pending claim shows its selected node.
func claimStatus(claim *v1.PersistentVolumeClaim, pv *v1.PersistentVolume, dataRoot string) volumeStatus {
	s := volumeStatus{
		Namespace: claim.Namespace,
		Claim:     claim.Name,
		Phase:     string(claim.Status.Phase),
		Node:      claim.Annotations[provisioner.AnnSelectedNode],
		Created:   claim.CreationTimestamp,
	}
	if claim.Spec.StorageClassName != nil {
		s.StorageClass = *claim.Spec.StorageClassName
	}
	for _, m := range claim.Spec.AccessModes {
		s.AccessModes = append(s.AccessModes, string(m))
	}
	if q, ok := claim.Spec.Resources.Requests[v1.ResourceStorage]; ok {
		s.Requested = q.String()
	}
	if pv == nil {
		return s
	}
	s.PV = pv.Name
	s.ReclaimPolicy = string(pv.Spec.PersistentVolumeReclaimPolicy)
	if nodes := provisioner.NodesOf(pv, driver.TopologyKey).UnsortedList(); len(nodes) == 1 {
		s.Node = nodes[0]
	}
	// The driver keeps volume <id> in <data-root>/volumes/<id>.
	attrs := pv.Spec.CSI.VolumeAttributes
	// The driver records where the volume lies (any pool); a PV made
	// before it did is in the default data root.
	s.Path = attrs[driver.VolumeContextPath]
	if s.Path == "" {
		s.Path = filepath.Join(dataRoot, "volumes", pv.Spec.CSI.VolumeHandle)
	}
	s.Backend = attrs[driver.VolumeContextBackend]
	s.Pool = attrs[driver.VolumeContextPool]
	if q, ok := pv.Spec.Capacity[v1.ResourceStorage]; ok {
		s.Capacity = q.String()
	}
	return s
}

// fillUsage asks each node of a provisioned claim once for its volumes' use
// and fills it in. A node that cannot be asked leaves the use unknown and a
// warning.
func fillUsage(ctx context.Context, rows []volumeStatus, usage usageFunc) []string {
	var warnings []string
	used := map[claimKey]uint64{}
	for _, node := range claimNodes(rows) {
		u, err := usage(ctx, node)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("no usage from node %s: %v", node, err))
			continue
		}
		maps.Copy(used, u)
	}
	for i := range rows {
		if v, ok := used[rows[i].key()]; ok && rows[i].PV != "" {
			rows[i].UsedBytes = &v
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
