package provisioner

import (
	"fmt"
	"maps"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/stickyvol/stickyvol/driver"
)

// persistentVolume builds the PV for a volume the driver created.
func (p *Provisioner) persistentVolume(opts controller.ProvisionOptions, req *csi.CreateVolumeRequest, vol *csi.Volume) (*v1.PersistentVolume, error) {
	if vol.GetVolumeId() == "" {
		return nil, fmt.Errorf("the stickyvol driver on node %q returned a volume without an ID", p.nodeName)
	}
	// CSI allows 0 for "unknown"; the volume then has what was asked for.
	size := vol.GetCapacityBytes()
	if size == 0 {
		size = req.GetCapacityRange().GetRequiredBytes()
	}
	if size < req.GetCapacityRange().GetRequiredBytes() {
		// The PV controller would never bind a PV smaller than the claim.
		return nil, fmt.Errorf("the stickyvol driver on node %q made volume %s with %d bytes, less than the %d the claim requests",
			p.nodeName, vol.GetVolumeId(), size, req.GetCapacityRange().GetRequiredBytes())
	}

	claim := opts.PVC
	reclaim := v1.PersistentVolumeReclaimDelete
	var mountOptions []string
	if sc := opts.StorageClass; sc != nil {
		if sc.ReclaimPolicy != nil {
			reclaim = *sc.ReclaimPolicy
		}
		mountOptions = sc.MountOptions
	}
	volumeMode := v1.PersistentVolumeFilesystem
	if claim.Spec.VolumeMode != nil {
		volumeMode = *claim.Spec.VolumeMode
	}

	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			AccessModes:                   slices.Clone(claim.Spec.AccessModes),
			Capacity:                      v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)},
			PersistentVolumeReclaimPolicy: reclaim,
			MountOptions:                  slices.Clone(mountOptions),
			VolumeMode:                    &volumeMode,
			StorageClassName:              storageClassName(opts),
			NodeAffinity:                  p.nodeAffinity(vol.GetAccessibleTopology()),
			PersistentVolumeSource: v1.PersistentVolumeSource{
				CSI: &v1.CSIPersistentVolumeSource{
					Driver:           p.driverName,
					VolumeHandle:     vol.GetVolumeId(),
					VolumeAttributes: vol.GetVolumeContext(),
					// A directory or subvolume has no file system of its
					// own: empty. An image volume's is the driver's word.
					FSType: vol.GetVolumeContext()[driver.VolumeContextFsType],
				},
			},
		},
	}, nil
}

func storageClassName(opts controller.ProvisionOptions) string {
	if opts.StorageClass != nil {
		return opts.StorageClass.Name
	}
	if opts.PVC.Spec.StorageClassName != nil {
		return *opts.PVC.Spec.StorageClassName
	}
	return ""
}

// nodeAffinity turns the driver's accessible topology into required node
// affinity: one term per topology, each segment a key In [value] expression.
// The scheduler then places every pod that uses the PV on the PV's node, which
// is what makes a StatefulSet pod come back to its data.
//
// A driver that reports no topology still made the volume on this node, so the
// PV gets this node's segment rather than no affinity at all: a node-local PV
// without affinity would let pods start on nodes where the data is not.
func (p *Provisioner) nodeAffinity(topologies []*csi.Topology) *v1.VolumeNodeAffinity {
	if len(topologies) == 0 {
		topologies = []*csi.Topology{p.nodeTopology()}
	}
	terms := make([]v1.NodeSelectorTerm, 0, len(topologies))
	for _, topo := range topologies {
		var term v1.NodeSelectorTerm
		for _, key := range slices.Sorted(maps.Keys(topo.GetSegments())) {
			term.MatchExpressions = append(term.MatchExpressions, v1.NodeSelectorRequirement{
				Key:      key,
				Operator: v1.NodeSelectorOpIn,
				Values:   []string{topo.GetSegments()[key]},
			})
		}
		terms = append(terms, term)
	}
	return &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: terms}}
}

// NodesOf returns the nodes a PV's required node affinity names through
// topologyKey or the kubernetes.io/hostname label. stickyvol PVs name exactly
// one; PVs written by hand may use the hostname label.
func NodesOf(pv *v1.PersistentVolume, topologyKey string) sets.Set[string] {
	nodes := sets.New[string]()
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return nodes
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if expr.Operator != v1.NodeSelectorOpIn {
				continue
			}
			if expr.Key == topologyKey || expr.Key == v1.LabelHostname {
				nodes.Insert(expr.Values...)
			}
		}
	}
	return nodes
}

func (p *Provisioner) nodesOf(pv *v1.PersistentVolume) sets.Set[string] {
	return NodesOf(pv, p.topologyKey)
}
