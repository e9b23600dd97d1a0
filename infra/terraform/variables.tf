variable "bucket_name" {
  description = "Name of the S3 bucket that holds Strata's blocks (globally unique)."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (IRSA)."
  type        = string
}

variable "oidc_provider_url" {
  description = "Issuer URL of the EKS cluster's OIDC provider, without https:// (e.g. oidc.eks.eu-west-1.amazonaws.com/id/ABC)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the Strata workloads."
  type        = string
  default     = "strata"
}

variable "service_accounts" {
  description = "Kubernetes ServiceAccount names per workload (must match infra/k8s/serviceaccounts.yaml)."
  type        = map(string)
  validation {
    condition     = length(setsubtract(["compactor", "gateway", "receiver"], keys(var.service_accounts))) == 0
    error_message = "service_accounts needs the keys compactor, gateway and receiver."
  }
  default = {
    compactor = "strata-compactor"
    gateway   = "strata-gateway"
    receiver  = "strata-receiver"
  }
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS; null uses SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which incomplete multipart uploads are aborted."
  type        = number
  default     = 1
}

variable "object_lock" {
  description = "Enable S3 Object Lock (off by default: retention and compaction delete blocks)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "region" {
  description = "AWS region of the bucket (also [store] region in infra/k8s/configmap.yaml)."
  type        = string
}
