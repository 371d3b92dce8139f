#!/usr/bin/env bash
# GKE: the stages on a TPU slice (or GPU nodes) of a GKE cluster, one pod per host, either as a
# JobSet this script writes (kubectl) or through xpk (PyPI `xpk`, which writes its own JobSet).
#
#   launch/gke.sh [--dry-run] COMMAND --name NAME [options] [-- MAIN_FLAGS...]
#
# Commands:
#   manifest    print the JobSet YAML: one replicated job of HOSTS pods (Indexed completions, pod i
#               = process i), each running `python -m grlhfv_jax.main --config CONFIG --workdir
#               gs://... MAIN_FLAGS` with JAX_COORDINATOR_ADDRESS (pod 0's DNS name, port 8482),
#               JAX_NUM_PROCESSES (HOSTS) and JAX_PROCESS_ID (the pod's completion index): what
#               grlhfv_jax.sharding.initialize_distributed reads
#   apply       write the manifest to --manifest-file and `kubectl apply -f` it
#   logs        stream pod 0's log (kubectl logs -f)
#   delete      kubectl delete jobset NAME (tear down; the workdir stays)
#   xpk-create  `xpk workload create`: an image from --base-image plus a `git archive` of --commit
#               (xpk's --script-dir), one slice of --tpu-type; GKE's TPU env (TPU_WORKER_HOSTNAMES,
#               TPU_WORKER_ID) starts jax.distributed
#   xpk-delete  `xpk workload delete`
#
# Options:
#   --name NAME             JobSet / workload name (required; lowercase, digits, '-')
#   --config PATH[:ARG]     config file (required for manifest, apply, xpk-create)
#   --workdir gs://B/P      the run's workdir (required for manifest, apply, xpk-create)
#   --tpu-type TYPE         default v5p-64: v4-N, v5p-N (N TensorCores), v5litepod-N, v6e-N (N chips);
#                           the slice's topology and hosts (4 chips each) follow from it
#   --topology AxB[xC]      the slice's topology when TYPE's size is not in the table
#   --gpu TYPE              GPU nodes instead (e.g. nvidia-h100-80gb, GKE's accelerator label)
#   --gpus-per-host N       with --gpu (default 8)
#   --hosts N               with --gpu: the number of hosts (default 1)
#   --commit REF            what to run (default HEAD)
#   --repo-url URL          manifest / apply: each pod clones URL, checks the commit out and
#                           installs it (the commit must be pushed there); without it the image
#                           (--image) must hold the repository, installed, in its working directory
#   --image IMAGE           container image (default python:3.11)
#   --base-image IMAGE      xpk-create's base image (default python:3.11)
#   --jax SPEC              the jax requirement (default jax[tpu]; with --gpu jax[cuda12])
#   --max-restarts N        JobSet / xpk restarts of the whole set after a failure or preemption
#                           (default 3): each restart resumes from the workdir's checkpoints
#   --namespace NS          kubectl namespace (default: the context's)
#   --manifest-file FILE    where apply writes the YAML (default /tmp/grlhfv-NAME.yaml)
#   --cluster C, --project P, --zone Z   for xpk (cluster required)
#   --dry-run               print the commands, one a line, shell-quoted; run nothing
#   MAIN_FLAGS              after --: more flags for main.py (--config.a.b=v, --dry_run, --restart)
set -euo pipefail
PROG=gke.sh
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" config="" workdir="" tpu_type=v5p-64 topology="" gpu="" gpus_per_host=8 hosts=1
commit=HEAD repo_url="" image=python:3.11 base_image=python:3.11 jax="" max_restarts=3
namespace="" manifest_file="" cluster="" project="" zone=""
parse_args " --name --config --workdir --tpu-type --topology --gpu --gpus-per-host --hosts --commit --repo-url --image --base-image --jax --max-restarts --namespace --manifest-file --cluster --project --zone " "" "$@"

commands=" manifest apply logs delete xpk-create xpk-delete "
cmd=$(command_from "$commands" "${positional[@]}")
[[ -n $name ]] || usage_error "--name is required"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ && ${#name} -le 40 ]] \
  || usage_error "--name '$name': at most 40 lowercase letters, digits and '-'"
for v in gpus_per_host hosts max_restarts; do
  [[ ${!v} =~ ^[0-9]+$ ]] || usage_error "--${v//_/-} '${!v}': expected a whole number"
done
if [[ $cmd == manifest || $cmd == apply || $cmd == xpk-create ]]; then
  require_config "$cmd" "$config" "$workdir"
  require_gs --workdir "$workdir"
fi
if [[ $cmd == xpk-* ]]; then
  [[ -n $cluster ]] || usage_error "--cluster is required for $cmd"
  [[ -z $gpu ]] || usage_error "$cmd: this script sends TPU workloads to xpk only (use manifest / apply for GPUs)"
fi

# The slice: GKE's accelerator label, topology, hosts, chips per host.
if [[ -n $gpu ]]; then
  [[ $hosts -ge 1 && $gpus_per_host -ge 1 ]] || usage_error "--hosts and --gpus-per-host must be at least 1"
  [[ -n $jax ]] || jax="jax[cuda12]"
  chips_per_host=$gpus_per_host
else
  [[ -n $jax ]] || jax="jax[tpu]"
  [[ $tpu_type =~ ^(v4|v5p|v5litepod|v6e)-([0-9]+)$ ]] \
    || usage_error "--tpu-type '$tpu_type': expected v4-N, v5p-N, v5litepod-N or v6e-N"
  family=${BASH_REMATCH[1]} size=${BASH_REMATCH[2]}
  case $family in
    v4) label=tpu-v4-podslice; chips=$(( size / 2 )) ;;
    v5p) label=tpu-v5p-slice; chips=$(( size / 2 )) ;;
    v5litepod) label=tpu-v5-lite-podslice; chips=$size ;;
    v6e) label=tpu-v6e-slice; chips=$size ;;
  esac
  if [[ -z $topology ]]; then
    if [[ $family == v4 || $family == v5p ]]; then
      case $chips in
        4) topology=2x2x1 ;; 8) topology=2x2x2 ;; 16) topology=2x2x4 ;; 32) topology=2x4x4 ;;
        64) topology=4x4x4 ;; 128) topology=4x4x8 ;; 256) topology=4x8x8 ;; 512) topology=8x8x8 ;;
      esac
    else
      case $chips in
        4) topology=2x2 ;; 8) topology=2x4 ;; 16) topology=4x4 ;; 32) topology=4x8 ;;
        64) topology=8x8 ;; 128) topology=8x16 ;; 256) topology=16x16 ;;
      esac
    fi
    [[ -n $topology ]] || usage_error "--tpu-type $tpu_type: give its --topology"
  fi
  [[ $topology =~ ^[0-9]+(x[0-9]+){1,2}$ ]] || usage_error "--topology '$topology': expected AxB or AxBxC"
  product=1
  IFS=x read -ra dims <<< "$topology"
  for d in "${dims[@]}"; do product=$(( product * d )); done
  [[ $product -eq $chips ]] || usage_error "--topology $topology holds $product chips, $tpu_type has $chips"
  if [[ $chips -le 1 ]]; then chips_per_host=1; else chips_per_host=4; fi   # GKE TPU VMs: 4 chips each
  hosts=$(( chips / chips_per_host ))
fi

full_commit=""
if [[ $cmd == manifest || $cmd == apply || $cmd == xpk-create ]]; then
  full_commit=$(resolve_commit "$commit")
fi
kubectl=(kubectl)
[[ -n $namespace ]] && kubectl+=(--namespace="$namespace")

main_line() {  # the python command line, shell-quoted
  show python -m grlhfv_jax.main --config "$config" --workdir "$workdir" "${main_flags[@]}"
}

pod_script() {  # what each pod runs (bash -c)
  if [[ -n $repo_url ]]; then
    printf '%s\n' "set -e" \
      "git clone $(q "$repo_url") /grlhfv_jax && cd /grlhfv_jax && git checkout --detach $(q "$full_commit")" \
      "pip install -q -e ".[gcs]" $(q "$jax")"
  else
    printf '%s\n' "set -e" "# the image holds commit $full_commit, installed, in its working directory"
  fi
  printf 'exec %s\n' "$(main_line)"
}

manifest() {
  local sel res
  if [[ -n $gpu ]]; then
    sel="cloud.google.com/gke-accelerator: $gpu"
    res="nvidia.com/gpu: $chips_per_host"
  else
    sel="cloud.google.com/gke-tpu-accelerator: $label
              cloud.google.com/gke-tpu-topology: $topology"
    res="google.com/tpu: $chips_per_host"
  fi
  cat <<EOF
# JobSet for grlhfv_jax: ${hosts} pod(s), one JAX process per host; commit ${full_commit}.
# Made by launch/gke.sh; apply with: kubectl apply -f FILE
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: ${name}
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: ${max_restarts}
  network:
    enableDNSHostnames: true
    subdomain: ${name}
  replicatedJobs:
  - name: workers
    replicas: 1
    template:
      spec:
        parallelism: ${hosts}
        completions: ${hosts}
        completionMode: Indexed
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            terminationGracePeriodSeconds: 300
            nodeSelector:
              ${sel}
            containers:
            - name: grlhfv
              image: ${image}
              ports:
              - containerPort: ${COORDINATOR_PORT}
              env:
              - name: PYTHONUNBUFFERED
                value: "1"
EOF
  if [[ $hosts -gt 1 ]]; then
    cat <<EOF
              - name: JAX_COORDINATOR_ADDRESS
                value: "${name}-workers-0-0.${name}:${COORDINATOR_PORT}"
              - name: JAX_NUM_PROCESSES
                value: "${hosts}"
              - name: JAX_PROCESS_ID
                valueFrom:
                  fieldRef:
                    fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
EOF
  fi
  cat <<EOF
              command:
              - bash
              - -c
              - |
EOF
  pod_script | sed 's/^/                /'
  cat <<EOF
              resources:
                limits:
                  ${res}
EOF
}

pod0=(-l "jobset.sigs.k8s.io/jobset-name=$name,batch.kubernetes.io/job-completion-index=0")

case $cmd in
  manifest) manifest ;;
  apply)
    file=${manifest_file:-${TMPDIR:-/tmp}/grlhfv-$name.yaml}
    if [[ $DRY_RUN == 1 ]]; then
      note "the manifest (\`launch/gke.sh manifest\` with the same options) goes to $file"
    else
      manifest > "$file"
    fi
    run "${kubectl[@]}" apply -f "$file" ;;
  logs) run "${kubectl[@]}" logs -f --tail=-1 "${pod0[@]}" ;;
  delete) run "${kubectl[@]}" delete jobset "$name" ;;
  xpk-create)
    dir=${TMPDIR:-/tmp}/grlhfv_jax-$full_commit
    archive_commit "$full_commit" "$dir.tar.gz"
    run mkdir -p "$dir"
    run tar -xzf "$dir.tar.gz" -C "$dir" --strip-components=1
    xpk=(xpk workload create --cluster="$cluster" --workload="$name" --tpu-type="$tpu_type" --num-slices=1
         --base-docker-image="$base_image" --script-dir="$dir" --max-restarts="$max_restarts")
    [[ -n $project ]] && xpk+=(--project="$project")
    [[ -n $zone ]] && xpk+=(--zone="$zone")
    run "${xpk[@]}" --command="pip install -q -e ".[gcs]" $(q "$jax") && $(main_line)" ;;
  xpk-delete)
    xpk=(xpk workload delete --cluster="$cluster" --workload="$name")
    [[ -n $project ]] && xpk+=(--project="$project")
    [[ -n $zone ]] && xpk+=(--zone="$zone")
    run "${xpk[@]}" ;;
esac
