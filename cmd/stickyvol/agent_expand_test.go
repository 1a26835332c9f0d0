package main

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// growClaim binds the claim to its PV, as the PV controller would, asks for
// twice its size and waits until the agent has grown the volume: the PV and
// the claim's status say the new size.
func growClaim(t *testing.T, kube kubernetes.Interface, namespace, name, pvName string) {
	t.Helper()
	ctx := t.Context()
	claims := kube.CoreV1().PersistentVolumeClaims(namespace)
	claim, err := claims.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	size := claim.Spec.Resources.Requests[v1.ResourceStorage]
	claim.Spec.VolumeName = pvName
	if claim, err = claims.Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	claim.Status = v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound, AccessModes: claim.Spec.AccessModes,
		Capacity: v1.ResourceList{v1.ResourceStorage: size}}
	if claim, err = claims.UpdateStatus(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	bigger := *resource.NewQuantity(2*size.Value(), resource.BinarySI)
	claim.Spec.Resources.Requests[v1.ResourceStorage] = bigger
	if _, err := claims.Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the claim grown to "+bigger.String(), func(ctx context.Context) (bool, error) {
		claim, err := claims.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		have, pvHas := claim.Status.Capacity[v1.ResourceStorage], pv.Spec.Capacity[v1.ResourceStorage]
		return have.Cmp(bigger) == 0 && pvHas.Cmp(bigger) == 0, nil
	})
}
