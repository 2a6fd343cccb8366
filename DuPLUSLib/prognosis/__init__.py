"""Head-and-neck prognosis: the EHR as text, fused with image features, in a Cox survival head.

    ehr.py            the EHR schema, validation, the EHR sentence and its numeric codes
    cohort.py         a cohort CSV: column mapping, validation, the example cohorts
    covariates.py     every other column typed (numeric, binary, ordinal, categorical, text), the form
    features.py       patients -> the head's input (imputation, standardisation, projection)
    cox.py            the partial likelihood and Breslow's baseline hazard
    model.py          PrognosisModel (kinds coxph, head, ensemble): fit, predict_risk, survival, contributions
    baseline.py       lifelines CoxPH on the same tabular inputs
    evaluation.py     repeated k-fold CV, C-index, integrated Brier score
    selection.py      nested CV choosing among penalised CoxPH, the DuPLUS head and their ensemble
    image_features.py tumour volumes and intensity; network features pooled in the tumour
    readout.py        risk, percentile, group, survival at the horizons (time unit kept); KM + contribution plot
    bundle.py         a model folder: JSON + safetensors + sha256
    pipeline.py       the steps the command line and the Slicer module share
    synthetic.py      a synthetic head-and-neck image + EHR cohort from the phantom generator
    cli.py            ``duplus prognosis``

Nothing is imported here, so ``duplus`` starts without loading torch.
"""
