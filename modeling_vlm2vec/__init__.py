"""vlm2vec: turn any Hugging Face vision-language model into an instruction-following multimodal embedding model.

`Vlm2VecConfig` / `Vlm2VecModel` are the Hub files (also loadable with `trust_remote_code=True` without this
package); `ContrastiveTrainer` trains them with chunked GradCache InfoNCE and hard negatives.
"""

from transformers import AutoConfig, AutoModel

from .configuration_vlm2vec import Vlm2VecConfig
from .modeling_vlm2vec import Vlm2VecModel, Vlm2VecOutput

AutoConfig.register(Vlm2VecConfig.model_type, Vlm2VecConfig, exist_ok=True)
AutoModel.register(Vlm2VecConfig, Vlm2VecModel, exist_ok=True)

__all__ = ["Vlm2VecConfig", "Vlm2VecModel", "Vlm2VecOutput", "ContrastiveTrainer"]


def __getattr__(name: str):
    # The trainer pulls in the training stack; import it only when asked for.
    if name == "ContrastiveTrainer":
        from .training.trainer import ContrastiveTrainer

        return ContrastiveTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
