package provisioner

import (
	"fmt"
	"maps"
	"math"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Refusal messages. They end up in a Warning event on the claim, read by
// someone who wrote a StatefulSet and may not know what a CSI driver is.
const (
	refuseRWX = "stickyvol volumes live on one node's disk; ReadWriteMany needs shared storage " +
		"that pods on several nodes can reach (NFS, CephFS, a cloud file service). " +
		"Use accessModes: [ReadWriteOnce] (every pod of a StatefulSet gets its own claim), " +
		"or a StorageClass backed by shared storage"
	refuseROX = "stickyvol volumes live on one node's disk; ReadOnlyMany needs shared storage " +
		"that pods on several nodes can reach. Use accessModes: [ReadWriteOnce] and mount the " +
		"volume readOnly in the pod, or a StorageClass backed by shared storage"
	// refuseBlockMountOptions is followed by the class's name.
	refuseBlockMountOptions = "a volumeMode: Block claim gets a raw device, which is not mounted, and StorageClass %q " +
		"has mountOptions; use a class without mountOptions for block claims"
	refuseNoModes = "the claim lists no accessModes; use accessModes: [ReadWriteOnce]"
	// refuseDataSource is followed by the source's kind and name.
	refuseDataSource = "stickyvol can fill a new volume only from another claim of its own (a clone) or a " +
		"VolumeSnapshot (a restore), both in the claim's namespace, not from this data source: the volume " +
		"would start empty. Remove dataSource and dataSourceRef from the claim to get an empty volume; source: %s %q"
	// refuseNodeLossPolicy is followed by the value given.
	refuseNodeLossPolicy = "StorageClass parameter " + ParamNodeLossPolicy + "=%q: want Keep (the default) or Recreate"
	// refuseSize is followed by the request or limit as written.
	refuseSize = "the claim's storage %s %s is more bytes than a volume can have (at most 8Ei, 2^63-1 bytes); ask for less"
)

// createVolumeRequest maps a claim to the CSI request, or returns the refusal
// for claims stickyvol cannot serve.
func (p *Provisioner) createVolumeRequest(opts controller.ProvisionOptions) (*csi.CreateVolumeRequest, error) {
	claim := opts.PVC
	block := claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == v1.PersistentVolumeBlock
	var mountFlags []string
	if opts.StorageClass != nil {
		mountFlags = opts.StorageClass.MountOptions
	}
	if block && len(mountFlags) > 0 {
		return nil, fmt.Errorf(refuseBlockMountOptions, opts.StorageClass.Name)
	}
	if kind, name, ok := dataSource(claim); ok {
		_, clone := CloneSourceName(claim)
		_, restore := SnapshotSourceName(claim)
		if !clone && !restore {
			return nil, fmt.Errorf(refuseDataSource, kind, name)
		}
	}
	if opts.StorageClass != nil {
		if policy, ok := opts.StorageClass.Parameters[ParamNodeLossPolicy]; ok && policy != NodeLossKeep && policy != NodeLossRecreate {
			return nil, fmt.Errorf(refuseNodeLossPolicy, policy)
		}
	}
	caps, err := volumeCapabilities(claim.Spec.AccessModes, mountFlags, block)
	if err != nil {
		return nil, err
	}
	capacity, err := capacityRange(claim)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeRequest{
		// The library derives the PV name from the claim UID, so a retry
		// after a lost reply asks for the same volume and the driver
		// returns the one it made.
		Name:               opts.PVName,
		CapacityRange:      capacity,
		VolumeCapabilities: caps,
		Parameters:         p.parameters(opts),
		AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{p.nodeTopology()},
			Preferred: []*csi.Topology{p.nodeTopology()},
		},
	}, nil
}

// nodeTopology is this node's topology segment, as the driver reports it.
func (p *Provisioner) nodeTopology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{p.topologyKey: p.nodeName}}
}

// volumeCapabilities maps the claim's access modes to CSI capabilities, one
// per mode, all mounted filesystems or, for a volumeMode: Block claim
// (block), all of the block access type, which the driver serves as a
// loop device over a sparse file.
//
// ReadWriteOnce means "one node, any number of pods on it", which is CSI's
// SINGLE_NODE_MULTI_WRITER (the driver advertises that capability), not
// SINGLE_NODE_WRITER, whose "one writer" the kubelet does not enforce
// anyway. ReadWriteOncePod is SINGLE_NODE_SINGLE_WRITER, which the driver
// enforces at publish. Modes that span nodes are refused here with a message
// for people, before the driver could refuse them with one for programs.
func volumeCapabilities(modes []v1.PersistentVolumeAccessMode, mountFlags []string, block bool) ([]*csi.VolumeCapability, error) {
	if len(modes) == 0 {
		return nil, fmt.Errorf("%s", refuseNoModes)
	}
	caps := make([]*csi.VolumeCapability, 0, len(modes))
	for _, mode := range modes {
		var csiMode csi.VolumeCapability_AccessMode_Mode
		switch mode {
		case v1.ReadWriteOnce:
			csiMode = csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER
		case v1.ReadWriteOncePod:
			csiMode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		case v1.ReadWriteMany:
			return nil, fmt.Errorf("%s", refuseRWX)
		case v1.ReadOnlyMany:
			return nil, fmt.Errorf("%s", refuseROX)
		default:
			return nil, fmt.Errorf("access mode %q is unknown to stickyvol; use ReadWriteOnce", mode)
		}
		c := &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: mountFlags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csiMode},
		}
		if block {
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}
		caps = append(caps, c)
	}
	return caps, nil
}

// capacityRange takes the claim's storage request as the required size and
// its storage limit, if any, as the limit. A size beyond int64 is refused:
// Quantity.Value() would wrap it (2^64 bytes becomes 0, which the driver
// reads as "no size" and makes its default), leaving a PV that can never
// bind to the claim.
func capacityRange(claim *v1.PersistentVolumeClaim) (*csi.CapacityRange, error) {
	r := &csi.CapacityRange{}
	for _, size := range []struct {
		what string
		list v1.ResourceList
		dst  *int64
	}{{"request", claim.Spec.Resources.Requests, &r.RequiredBytes}, {"limit", claim.Spec.Resources.Limits, &r.LimitBytes}} {
		q, ok := size.list[v1.ResourceStorage]
		if !ok {
			continue
		}
		if q.Cmp(*maxBytes) > 0 {
			return nil, fmt.Errorf(refuseSize, size.what, q.String())
		}
		*size.dst = q.Value()
	}
	return r, nil
}

var maxBytes = resource.NewQuantity(math.MaxInt64, resource.BinarySI)

// dataSource returns the kind and name of the claim's data source, if any:
// dataSourceRef, which the API server also fills from dataSource, else
// dataSource.
func dataSource(claim *v1.PersistentVolumeClaim) (kind, name string, ok bool) {
	if ref := claim.Spec.DataSourceRef; ref != nil {
		return ref.Kind, ref.Name, true
	}
	if ref := claim.Spec.DataSource; ref != nil {
		return ref.Kind, ref.Name, true
	}
	return "", "", false
}

// forPopulator tells whether the claim's data comes from a volume populator
// (a dataSourceRef to anything but a claim or a VolumeSnapshot). The
// populator provisions a claim of its own (without a data source), fills
// it, and moves the volume over; this claim is left to it, as
// external-provisioner leaves it.
func forPopulator(claim *v1.PersistentVolumeClaim) bool {
	ref := claim.Spec.DataSourceRef
	if ref == nil {
		return false
	}
	group := ""
	if ref.APIGroup != nil {
		group = *ref.APIGroup
	}
	claimSource := group == "" && ref.Kind == "PersistentVolumeClaim"
	snapshotSource := group == "snapshot.storage.k8s.io" && ref.Kind == "VolumeSnapshot"
	return !claimSource && !snapshotSource
}

// parameters are the class's DriverParameters plus the claim and PV names.
// The names are set last so a class cannot spoof them.
func (p *Provisioner) parameters(opts controller.ProvisionOptions) map[string]string {
	params := DriverParameters(opts.StorageClass)
	params[ParamPVCName] = opts.PVC.Name
	params[ParamPVCNamespace] = opts.PVC.Namespace
	params[ParamPVName] = opts.PVName
	return params
}

// DriverParameters returns the parameters of class that are the driver's:
// all but the provisioner's own (nodeLossPolicy), as CreateVolume gets them
// and as GetCapacity should be asked with them. A nil class has none. The
// map is a new one.
func DriverParameters(class *storagev1.StorageClass) map[string]string {
	params := make(map[string]string)
	if class != nil {
		maps.Copy(params, class.Parameters)
	}
	delete(params, ParamNodeLossPolicy)
	return params
}
