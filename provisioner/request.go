package provisioner

import (
	"fmt"
	"maps"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
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
	refuseBlock = "stickyvol volumes are directories on the node's disk; volumeMode: Block is not " +
		"supported. Use volumeMode: Filesystem (the default)"
	refuseNoModes = "the claim lists no accessModes; use accessModes: [ReadWriteOnce]"
)

// createVolumeRequest maps a claim to the CSI request, or returns the refusal
// for claims stickyvol cannot serve.
func (p *Provisioner) createVolumeRequest(opts controller.ProvisionOptions) (*csi.CreateVolumeRequest, error) {
	claim := opts.PVC
	if claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == v1.PersistentVolumeBlock {
		// The library already refuses Block claims before calling Provision
		// (this Provisioner does not implement BlockProvisioner); this
		// check keeps Provision correct on its own.
		return nil, fmt.Errorf("%s", refuseBlock)
	}
	var mountFlags []string
	if opts.StorageClass != nil {
		mountFlags = opts.StorageClass.MountOptions
	}
	caps, err := volumeCapabilities(claim.Spec.AccessModes, mountFlags)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeRequest{
		// The library derives the PV name from the claim UID, so a retry
		// after a lost reply asks for the same volume and the driver
		// returns the one it made.
		Name:               opts.PVName,
		CapacityRange:      capacityRange(claim),
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
// per mode, all mounted filesystems.
//
// ReadWriteOnce means "one node, any number of pods on it", which is CSI's
// SINGLE_NODE_MULTI_WRITER (the driver advertises that capability), not
// SINGLE_NODE_WRITER, whose "one writer" the kubelet does not enforce
// anyway. ReadWriteOncePod is SINGLE_NODE_SINGLE_WRITER, which the driver
// enforces at publish. Modes that span nodes are refused here with a message
// for people, before the driver could refuse them with one for programs.
func volumeCapabilities(modes []v1.PersistentVolumeAccessMode, mountFlags []string) ([]*csi.VolumeCapability, error) {
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
		caps = append(caps, &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: mountFlags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csiMode},
		})
	}
	return caps, nil
}

// capacityRange takes the claim's storage request as the required size and
// its storage limit, if any, as the limit.
func capacityRange(claim *v1.PersistentVolumeClaim) *csi.CapacityRange {
	r := &csi.CapacityRange{}
	if q, ok := claim.Spec.Resources.Requests[v1.ResourceStorage]; ok {
		r.RequiredBytes = q.Value()
	}
	if q, ok := claim.Spec.Resources.Limits[v1.ResourceStorage]; ok {
		r.LimitBytes = q.Value()
	}
	return r
}

// parameters are the StorageClass parameters plus the claim and PV names.
// The names are set last so a class cannot spoof them.
func (p *Provisioner) parameters(opts controller.ProvisionOptions) map[string]string {
	params := make(map[string]string)
	if opts.StorageClass != nil {
		maps.Copy(params, opts.StorageClass.Parameters)
	}
	params[ParamPVCName] = opts.PVC.Name
	params[ParamPVCNamespace] = opts.PVC.Namespace
	params[ParamPVName] = opts.PVName
	return params
}
