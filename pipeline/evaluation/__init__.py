"""The evaluation harness: the metrics (cIoU, AUC, IIoU, IAUC, mIoU, F-score) and scoring a release."""
